"""``python -m crab_jax.evaluate`` end to end: the original's files and crab_jax's, bad lines, --json."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from crab_jax.cli.evaluate import main
from crab_jax.data.media.decode import load_binary_mask

MEDIA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "media"
AVE_INSTRUCTION = ("<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nThis is a video:\n<video_start>"
                   "<video><video_end>\nThis is an audio:\n<audio_start><audio><audio_end>\nPlease describe the "
                   "events and time range that occurred in the video. [/INST]")


def write_lines(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def original_ave_line(vid, event, start, end, predict):
    """A line as inference_hyper_lora.py:inference_ave writes it (the collator's metadata + predict)."""
    return {"instruction": AVE_INSTRUCTION, "output": f"event:{event} start_time:{start} end_time:{end}</s>",
            "audio_path": f"/group/40061/cserdu/data/ave/AVE_Dataset/audio_data/{vid}.mp3",
            "video_path": f"/group/40061/cserdu/data/ave/AVE_Dataset/AVE/{vid}.mp4", "predict": predict}


def test_originals_infer_results_with_bad_lines(tmp_path, capsys):
    f = write_lines(tmp_path / "infer_results.jsonl", [
        original_ave_line("a", "Church bell", 0, 10, "<s> ... is <event> church bell </event>, and the time range "
                                                   "is <range> 0,5 </range>.</s>"),           # 5 of 10
        "this line is not JSON",
        original_ave_line("b", "Dog", 2, 4, "<s> I do not know </s>"),                        # 8 of 10 (background)
        {"instruction": "x", "predict": "y"},                                                 # no GT
    ])
    out = tmp_path / "out" / "tables.json"
    assert main(["--task", "ave", "--predictions", f, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "segment accuracy" in text and "0.6500" in text
    assert "2 lines unusable (line numbers infer_results.jsonl: 2, 4)" in text
    data = json.loads(out.read_text())
    ave = data["tasks"]["ave"]
    assert ave["metrics"] == [{"name": "segment accuracy", "value": pytest.approx(0.65), "n": 2}]
    assert (ave["scored"], ave["unparsable"]) == (2, 1)
    assert [u["line"] for u in data["unusable"]] == [2, 4]
    assert main(["--task", "ave", "--predictions", f, "--skip-unparsable", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"]["ave"]["metrics"][0]["value"] == pytest.approx(0.5)


def test_crab_jax_predictions_of_several_tasks_with_gt_masks(tmp_path, capsys):
    root = tmp_path / "avuie"
    (root / "avs").mkdir(parents=True)
    shutil.copy(MEDIA / "s4" / "0.png", root / "avs" / "0.png")
    gt = load_binary_mask(root / "avs" / "0.png")[0]
    run = tmp_path / "run"
    (run / "masks").mkdir(parents=True)
    Image.fromarray((gt * 255).astype(np.uint8)).save(run / "masks" / "0.png")
    f = write_lines(run / "preds.jsonl", [
        {"task": "s4", "predict": "<s>... <mask_start>", "reference": {"mask_path": "avs/0.png", "frame_idx": 0},
         "pred_mask_path": "masks/0.png"},
        {"task": "s4", "predict": "<s>no mask tokens", "reference": {"mask_path": "avs/0.png", "frame_idx": 0}},
        {"task": "avqa", "predict": "<s><answer> two </answer></s>",
         "reference": {"answer": "Two", "type": '["Visual", "Counting"]'}},
        {"task": "ave", "predict": "x", "reference": {"event": "dog", "start_time": 0, "end_time": 1}},
    ])
    out = tmp_path / "t.json"
    assert main(["--task", "s4", "--task", "avqa", "--predictions", f, "--data-root", str(root),
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    s4 = {m["name"]: m["value"] for m in data["tasks"]["s4"]["metrics"]}
    assert s4["J (mIoU)"] == pytest.approx(0.5, abs=1e-6)           # 1 and 0 (no mask: wrong)
    assert data["tasks"]["s4"]["unparsable"] == 1
    assert data["tasks"]["avqa"]["metrics"][0] == {"name": "accuracy", "value": 1.0, "n": 1}
    assert data["ignored"] == 1
    printed = capsys.readouterr().out
    assert "1 lines of other tasks ignored" in printed
    summary = printed.split("== summary", 1)[1].splitlines()[1:3]  # one headline row per task
    assert [row.split()[0] for row in summary] == ["s4", "avqa"] and "0.5000" in summary[0], summary
    # without --data-root the GT masks are looked for next to the predictions: none there
    assert main(["--task", "s4", "--predictions", f]) == 1
    assert "GT mask 'avs/0.png' not found" in capsys.readouterr().out


def test_all_tasks_are_the_tasks_the_files_hold(tmp_path, capsys):
    f = write_lines(tmp_path / "preds.jsonl", [
        {"task": "avqa", "predict": "<s><answer> two </answer></s>",
         "reference": {"answer": "Two", "type": '["Visual", "Counting"]'}},
        {"task": "ave", "predict": "x", "reference": {"event": "dog", "start_time": 0, "end_time": 1}},
    ])
    out = tmp_path / "t.json"
    assert main(["--task", "all", "--predictions", f, "--json", str(out)]) == 0
    assert sorted(json.loads(out.read_text())["tasks"]) == ["ave", "avqa"]  # not every scorer of the family
    original = write_lines(tmp_path / "infer_results.jsonl", [{"predict": "x", "output": "y"}])
    assert main(["--task", "all", "--predictions", original]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no line of" in err[0] and "name it with --task" in err[0], err


def test_exit_2_for_a_missing_file_or_an_unknown_task(tmp_path, capsys):
    f = write_lines(tmp_path / "p.jsonl", [{"predict": "x", "output": "y"}])
    assert main(["--task", "avqa", "--predictions", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--task", "nope", "--predictions", f]) == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "METEOR" in capsys.readouterr().out
