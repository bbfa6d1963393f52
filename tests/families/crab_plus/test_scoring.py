"""Crab+'s task scorers on small hand-made predictions lines, with hand-computed expected values."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image

from crab_jax import families
from crab_jax.cli import evaluate as evaluate_cli
from crab_jax.data.records.crab_plus import read_crab_plus_task
from crab_jax.evaluation.mask_files import binary_mask_image
from crab_jax.evaluation.scoring import metric_key
from crab_jax.evaluation.scoring import Context, score_files
from crab_jax.families.crab_plus import scoring
from crab_jax.families.crab_plus import task_scorers as TS
from crab_jax.families.crab_plus.family import FAMILY
from crab_jax.metrics.tables import UnusableRow
from tests.data.records.annotations import write_file

SIZE = 224


def ctx(root, *, skip=False, file="preds.jsonl"):
    return Context(str(root), (str(root),), str(file), skip)


def scored(task, rows, root=".", skip=False):
    c = ctx(root, skip=skip)
    scorer = scoring.TASK_SCORERS[task](c)
    for row in rows:
        scorer.add(row, c)
    return scorer.table()


def values(table):
    return {m.name: (m.value, m.n) for m in table.metrics}


def family():
    return dataclasses.replace(FAMILY, task_scorers=scoring.TASK_SCORERS,
                               prediction_metadata=scoring.prediction_metadata, headline=scoring.HEADLINE)


def check_headline(task, table):
    keys = {metric_key(task, m.name).split("/", 1)[1] for m in table.metrics}
    assert scoring.HEADLINE[task][0] in keys, (task, keys)


# ----------------------------------------------------------------------------- metadata


def test_prediction_metadata_carries_output_media_and_fields(tmp_path):
    write_file(tmp_path, "AVUIE_2/avqa/test.json", [dict(
        video_path="v.mp4", audio_path="a.wav", video_id="v", question_id=7, type='["Audio", "Counting"]',
        question="How many?", answer="two")])
    (rec,) = read_crab_plus_task("avqa", "test", tmp_path).records
    m = scoring.prediction_metadata(rec)
    assert (m["task"], m["split"], m["output"]) == ("avqa", "test", "two")
    assert m["type"] == '["Audio", "Counting"]' and (m["video_id"], m["question_id"]) == ("v", 7)
    assert m["video_path"] == "AVUIE_2/avqa/video/v.mp4" and m["audio_path"] == "AVUIE_2/avqa/audio/a.wav"
    assert m["source"] == "AVUIE_2/avqa/test.json#0"
    json.dumps(m)
    write_file(tmp_path, "AVUIE_2/ref_avs/test.json", [dict(
        visual_path="media/vid1/frames/3.jpg", audio_path="media/vid1/audio.wav", object="The dog", split="test_u",
        vid="vid1", uid="u1", fid=2, frame_idx=3)])
    (ref,) = read_crab_plus_task("ref_avs", "test", tmp_path).records
    m = scoring.prediction_metadata(ref)
    assert (m["split"], m["fid"], m["frame_idx"], m["output"]) == ("test_u", 2, 3, "The dog")
    assert m["image_path"] == "AVUIE_2/ref_avs/media/vid1/frames/3.jpg"
    assert m["mask_path"] == "AVUIE_2/ref_avs/gt_mask/vid1/fid_2/00003.png"
    write_file(tmp_path, "AVUIE_2/a2v/test.json", [dict(video1_path="1.mp4", video2_path="2.mp4", audio_path="a.wav",
                                                        correct_video=2)])
    (a2v,) = read_crab_plus_task("a2v", "test", tmp_path).records
    m = scoring.prediction_metadata(a2v)
    assert m["output"] == "<answer>2</answer>." and m["correct_video"] == 2
    assert m["video2_path"] == "AVUIE_2/a2v/video/2.mp4" and "frame_idx" not in m


# ----------------------------------------------------------------------------- label tasks


def label_row(pred, output):
    return {"predict": pred, "output": output}


def test_a2v_index_accuracy_with_unparsable():
    rows = [label_row("The audio is a dog. <answer>2</answer>.", "<answer>2</answer>."),
            label_row("<answer>one</answer>", "<answer>1</answer>."),
            label_row("<answer>1</answer>", "<answer>2</answer>."),
            label_row("I cannot tell", "<answer>1</answer>.")]
    t = scored("a2v", rows)
    assert values(t) == {"accuracy": (0.5, 4)} and (t.scored, t.unparsable) == (4, 1)
    t = scored("a2v", rows, skip=True)
    assert values(t) == {"accuracy": (pytest.approx(2 / 3), 3)} and t.skipped == 1
    check_headline("a2v", t)
    with pytest.raises(UnusableRow, match="is not '<answer>1</answer>."):
        scored("v2a", [label_row("<answer>1</answer>", "<answer>3</answer>.")])


def test_meld_accuracy_and_weighted_f1():
    gt = ["joy", "joy", "joy", "anger"]
    pred = ["<answer>Joy</answer>.", "<answer>anger</answer>", "no answer", "<answer>anger</answer>"]
    t = scored("meld", [label_row(p, f"<answer>{g}</answer>.") for p, g in zip(pred, gt)])
    v = values(t)
    assert v["accuracy"] == (0.5, 4)
    # joy: TP 1, FP 0, FN 2 -> 2/4; anger: TP 1, FP 1, FN 0 -> 2/3; weights 3 and 1.
    assert v["weighted F1"] == (pytest.approx((3 * 0.5 + 1 * 2 / 3) / 4), 4)
    check_headline("meld", t)


def test_dfew_war_and_uar_on_unequal_classes():
    gt = ["happy"] * 4 + ["sad"] * 2
    pred = ["happy", "happy", "happy", "sad", "sad", "happy"]
    t = scored("dfew", [label_row(f"<answer>{p}</answer>", f"<answer>{g}</answer>.") for p, g in zip(pred, gt)])
    v = values(t)
    assert v["WAR"] == (pytest.approx(4 / 6), 6)
    assert v["UAR"] == (pytest.approx((3 / 4 + 1 / 2) / 2), 6)
    check_headline("dfew", t)


def test_ks_and_ucf_top1():
    t = scored("ucf", [label_row("<answer>Playing Guitar</answer>", "<answer>playing guitar</answer>"),
                       label_row("<answer>drumming</answer>", "<answer>playing guitar</answer>")])
    assert values(t) == {"accuracy": (0.5, 2)}


def test_error_lines_and_missing_output():
    t = scored("ks", [{"error": "a.mp4: cannot decode", "output": "<answer>x</answer>"}])
    assert (t.scored, t.unparsable) == (1, 1) and values(t)["accuracy"] == (0.0, 1)
    with pytest.raises(UnusableRow, match="no 'output'"):
        scored("ks", [{"predict": "<answer>x</answer>"}])
    with pytest.raises(UnusableRow, match="no 'predict'"):
        scored("ks", [{"output": "<answer>x</answer>"}])


def test_avqa_overall_and_per_type():
    ac, av_t = '["Audio", "Counting"]', ["Audio-Visual", "Temporal"]
    rows = [{"predict": "<answer>Two</answer>", "output": "two", "type": ac},
            {"predict": "<answer>three</answer>", "output": "two", "type": ac},
            {"predict": "<answer>yes</answer>", "output": "yes", "type": av_t},
            {"predict": "no tag", "output": "no", "type": av_t}]
    t = scored("avqa", rows)
    v = values(t)
    assert v["accuracy"] == (0.5, 4) and v["Audio/Counting"] == (0.5, 2) and v["Audio/avg"] == (0.5, 2)
    assert v["Audio-Visual/Temporal"] == (0.5, 2) and t.unparsable == 1
    check_headline("avqa", t)
    with pytest.raises(UnusableRow, match="question 'type'"):
        scored("avqa", [{"predict": "<answer>x</answer>", "output": "x", "type": "Audio"}])


def test_avqa_thu_option_text_letter_and_index():
    options = ["Church bell", "Drum", "Dog"]
    instruction = f"Please answer the question based on the options: What?, options:{options}"
    rows = [{"predict": "<answer>Drum</answer>", "output": "1", "answer": 1, "multi_choice": options},
            {"predict": "<answer>(b)</answer>", "output": "1", "answer": 1, "multi_choice": options},
            {"predict": "<answer>dog</answer>", "output": "1", "answer": 1, "multi_choice": options},
            # the original's line: no multi_choice, the options only in the instruction
            {"predict": "<answer>Church bell</answer>", "output": "0", "instruction": instruction},
            {"predict": "<answer>Dog</answer>", "output": "Dog"}]
    t = scored("avqa_thu", rows)
    assert values(t) == {"accuracy": (pytest.approx(4 / 5), 5)}


# ----------------------------------------------------------------------------- AVE, AVVP, ARIG, captions


def test_ave_segment_accuracy_both_forms_and_unparsable():
    rows = [  # GT [2, 5) dog; predicted [2, 6): 9 of 10 slots equal
        {"predict": "<event> Dog </event> <range> 2,6 </range>", "event": "dog", "start_time": 2, "end_time": 5},
        # the original's line: GT in 'output'; predicted in the GT form, exact
        {"predict": "<answer>event:Church bell start_time:0 end_time:10</answer>",
         "output": "event:Church bell start_time:0 end_time:10"},
        # unparsable -> all background: GT [0, 4) -> 6 of 10
        {"predict": "a bell rings", "output": "event:Bell start_time:0 end_time:4"}]
    t = scored("ave", rows)
    assert values(t) == {"segment accuracy": (pytest.approx((9 + 10 + 6) / 30), 3)} and t.unparsable == 1
    assert values(scored("ave", rows, skip=True)) == {"segment accuracy": (pytest.approx(19 / 20), 2)}
    check_headline("ave", t)
    with pytest.raises(UnusableRow, match="is not 'event:E"):
        scored("ave", [{"predict": "x", "output": "Bell"}])


def test_avvp_by_hand():
    gt = "<audio_event>Speech,(0 10)</audio_event><visual_event>Speech,(0 10)</visual_event>"
    row = {"predict": "<answer><audio_event>Speech,(0 5)</audio_event></answer>", "event": gt}
    t = scored("avvp", [row])
    v = values(t)
    # segment: audio TP 5 FN 5 -> 2/3; visual and AV nothing found -> 0; Event@AV pooled TP 5 FN 15 -> 10/25
    assert v["segment Audio"][0] == pytest.approx(2 / 3) and v["segment Visual"][0] == 0.0
    assert v["segment Type@AV"][0] == pytest.approx(2 / 9) and v["segment Event@AV"][0] == pytest.approx(0.4)
    # event: [0,5) vs [0,10) has IoU 0.5 -> a TP; visual / AV each miss one event
    assert v["event Audio"][0] == 1.0 and v["event Type@AV"][0] == pytest.approx(1 / 3)
    assert v["event Event@AV"][0] == pytest.approx(2 / 3)
    check_headline("avvp", t)
    t = scored("avvp", [{"predict": "I do not know", "output": gt}])
    assert t.unparsable == 1 and values(t)["segment Audio"][0] == 0.0
    with pytest.raises(UnusableRow, match="outside the LLP list"):
        scored("avvp", [{"predict": "x", "event": "<audio_event>Tuba,(0 3)</audio_event>"}])


def test_arig_boxes_invalid_and_auc():
    gt = {"top_left": [0, 0], "bottom_right": [100, 100]}
    rows = [{"predict": "The dog, [0,0,100,100].", **gt},
            {"predict": "Its coordinates are <obj>(50,10)(40,60)</obj>.", **gt},  # corners out of order
            {"predict": "no box", "output": "The sounding object is dog. Its coordinates are <obj>(0,0)(100,100)</obj>."}]
    t = scored("arig", rows)
    v = values(t)
    iou = 10000 / (10000 + 10000 - 10000 + 1e-6)
    assert v["mIoU"] == (pytest.approx(iou / 3), 3) and v["cIoU"] == (pytest.approx(1 / 3), 3)
    # success rate: 1 at t = 0, 1/3 for t = 0.05 .. 0.95, 0 at t = 1 (iou < 1); trapezoids of width 0.05
    assert v["AUC"][0] == pytest.approx(0.05 * ((1 + 1 / 3) / 2 + 18 / 3 + (1 / 3) / 2))
    assert t.unparsable == 2 and any("out of order" in n for n in t.notes)
    check_headline("arig", t)
    t = scored("arig", rows, skip=True)
    assert values(t)["AUC"] == (pytest.approx(0.05 * 19.5), 1)


def test_captions_reach_the_kernel_with_their_references(monkeypatch):
    calls = []  # what the caption kernel is given (the real one runs Java METEOR: tests/metrics)

    def fake_caption_scores(predictions, references):
        calls.append((dict(predictions), dict(references)))
        return {"CIDEr": 0.5, "BLEU@4": 0.25, "tokenizer": "ptb"}

    monkeypatch.setattr(TS.captions, "caption_scores", fake_caption_scores)
    rows = [{"predict": "I see a stage. <answer>A man plays a Guitar.</answer>", "output": "A man plays guitar."},
            {"predict": "A dog barks.", "output": "<answer>A dog is barking</answer>"},
            {"predict": "  ", "output": "a man sings"}]
    t = scored("avcap", rows)
    assert values(t) == {"CIDEr": (0.5, 3), "BLEU@4": (0.25, 3)} and t.unparsable == 1
    preds, refs = calls[-1]
    assert sorted(preds.values()) == ["", "a dog barks.", "a man plays a guitar."]
    assert sorted(r[0] for r in refs.values()) == ["a dog is barking", "a man plays guitar.", "a man sings"]
    scored("avcap", rows, skip=True)
    assert sorted(calls[-1][0].values()) == ["a dog barks.", "a man plays a guitar."]
    check_headline("avcap", t)


# ----------------------------------------------------------------------------- masks


def png(path, mask, size=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    if size is not None:
        img = img.resize((size, size), Image.NEAREST)
    img.save(path)


def square(y0, y1, x0, x1):
    m = np.zeros((SIZE, SIZE), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture()
def seg_files(tmp_path):
    """Data root ``tmp_path/data``; predictions in ``tmp_path/out`` with masks under ``masks/``."""
    data, out = tmp_path / "data", tmp_path / "out"
    # S4 frame 1: GT rows 0..99 x cols 0..99, stored at 448 px (read back NEAREST to 224)
    png(data / "AVUIE_2/s4/v1/labels_rgb/1.png", square(0, 100, 0, 100), size=448)
    png(data / "AVUIE_2/s4/v1/labels_rgb/2.png", np.zeros((SIZE, SIZE)))  # empty GT
    # half of the object, written as the SAM2 stage writes its masks (a 0 / 255 'P' PNG)
    path = out / "masks/a.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    binary_mask_image(np.where(square(0, 100, 0, 50), 1.0, -1.0)).save(path, format="PNG")
    png(out / "masks/empty.png", np.zeros((SIZE, SIZE)))
    return data, out


def s4_rows():
    a = {"task": "s4", "image_path": "AVUIE_2/s4/v1/frames/1.jpg", "sam2_valid": True, "pred_mask_path": "masks/a.png"}
    b = {"task": "s4", "image_path": "AVUIE_2/s4/v1/frames/2.jpg", "sam2_valid": True,
         "pred_mask_path": "masks/empty.png"}
    bad = {"task": "s4", "image_path": "AVUIE_2/s4/v1/frames/1.jpg", "sam2_valid": False,
           "sam2_reason": "insufficient coordinates"}
    no_stage = {"task": "s4", "image_path": "AVUIE_2/s4/v1/frames/1.jpg", "predict": "[1,2,3,4]"}
    return [a, b, bad, no_stage]


def jf_a():
    """J and F of masks/a.png against the 1.png GT: 5000 of 10000 GT pixels predicted, all right."""
    p, r = 1.0, 0.5
    return 0.5, 1.3 * p * r / (0.3 * p + r)


def test_s4_valid_sample_switch_both_ways(seg_files):
    data, out = seg_files
    rows = s4_rows()
    j, f = jf_a()
    c = Context(str(data), (str(data), str(out)), str(out / "preds.jsonl"), False)
    scorer = scoring.TASK_SCORERS["s4"](c)
    for row in rows:
        scorer.add(row, c)
    t = scorer.table()
    # invalid lines score 0; the empty GT with an empty prediction scores J = F = 1
    assert values(t) == {"J (mIoU)": (pytest.approx((j + 1) / 4), 4), "F": (pytest.approx((f + 1) / 4), 4)}
    assert (t.scored, t.unparsable, t.skipped) == (4, 2, 0)
    assert any("insufficient coordinates x1" in n and "no SAM2 stage fields" in n and "J = F = 0" in n
               for n in t.notes)
    check_headline("s4", t)
    c = dataclasses.replace(c, skip_unparsable=True)
    scorer = scoring.TASK_SCORERS["ms3"](c)
    for row in rows:
        scorer.add({**row, "task": "ms3"}, c)  # the same B.6 GT rule as s4
    t = scorer.table()
    assert values(t) == {"J (mIoU)": (pytest.approx((j + 1) / 2), 2), "F": (pytest.approx((f + 1) / 2), 2)}
    assert (t.scored, t.unparsable, t.skipped) == (2, 2, 2) and any("left out" in n for n in t.notes)


def test_s4_missing_gt_is_unusable(seg_files):
    data, out = seg_files
    c = Context(str(data), (str(data), str(out)), str(out / "preds.jsonl"), False)
    row = {"image_path": "AVUIE_2/s4/v9/frames/1.jpg", "sam2_valid": True, "pred_mask_path": "masks/a.png"}
    with pytest.raises(UnusableRow, match="GT mask"):
        scoring.TASK_SCORERS["s4"](c).add(row, c)
    with pytest.raises(UnusableRow, match="needs '/frames/'"):
        scoring.TASK_SCORERS["s4"](c).add({**row, "image_path": "x/1.jpg"}, c)
    png(out / "masks/small.png", np.ones((100, 100)))
    with pytest.raises(UnusableRow, match="expected a 224x224 mask, got 100x100"):
        scoring.TASK_SCORERS["s4"](c).add({**row, "image_path": "AVUIE_2/s4/v1/frames/1.jpg",
                                           "pred_mask_path": "masks/small.png"}, c)
    with pytest.raises(UnusableRow, match="no 'pred_mask_path'"):
        scoring.TASK_SCORERS["s4"](c).add({**row, "pred_mask_path": None}, c)


def test_ref_avs_splits_negative_and_null(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    png(data / "AVUIE_2/ref_avs/gt_mask/vid1/fid_1/00003.png", square(0, 100, 0, 100))
    png(out / "m/half.png", square(0, 100, 0, 50))
    png(out / "m/full.png", np.ones((SIZE, SIZE)))
    png(out / "m/small.png", square(0, 10, 0, 10))  # 100 pixels
    seen = {"image_path": "AVUIE_2/ref_avs/media/vid1/frames/3.jpg", "fid": 1}
    rows = [
        {**seen, "split": "test_s", "sam2_valid": True, "pred_mask_path": "m/half.png"},
        {**seen, "split": "test_u", "sam2_valid": True, "sam2_negative": True},  # all-zero vs an object: 0, 0
        {**seen, "split": "test_u", "sam2_valid": False, "sam2_reason": "no coordinates"},
        {"split": "test_n", "sam2_valid": True, "sam2_negative": True},  # S 0
        {"split": "test_n", "sam2_valid": True, "pred_mask_path": "m/small.png"},
        {"split": "test_n", "sam2_valid": True, "pred_mask_path": "m/full.png"},  # S inf: left out
        {"split": "test_n", "sam2_valid": False, "sam2_reason": "box out of range"}]
    c = Context(str(data), (str(data), str(out)), str(out / "preds.jsonl"), False)
    scorer = scoring.TASK_SCORERS["ref_avs"](c)
    for row in rows:
        scorer.add(row, c)
    t = scorer.table()
    v = values(t)
    j, f = jf_a()
    assert v["seen J (mIoU)"] == (pytest.approx(j), 1) and v["seen F"] == (pytest.approx(f), 1)
    assert v["unseen J (mIoU)"] == (0.0, 2) and v["unseen F"] == (0.0, 2)
    assert v["null S (lower is better)"] == (pytest.approx((0 + math.sqrt(100 / (SIZE * SIZE - 100))) / 2), 2)
    assert any("1 full-image masks (S = inf)" in n for n in t.notes)
    assert any("1 invalid lines have no S" in n for n in t.notes)
    assert (t.unparsable, t.skipped) == (2, 1)
    check_headline("ref_avs", t)
    with pytest.raises(UnusableRow, match="'split'"):
        scorer.add({"split": "train", "sam2_valid": False}, c)


# ----------------------------------------------------------------------------- through evaluate


def test_evaluate_cli_scores_every_task_of_a_file(tmp_path, seg_files, monkeypatch, capsys):
    data, out = seg_files
    lines = [{"task": "ks", "predict": "<answer>drumming</answer>", "output": "<answer>drumming</answer>"},
             {"task": "ks", "predict": "I am not sure", "output": "<answer>drumming</answer>"},
             {"task": "cremad", "predict": "<answer>angry</answer>.", "output": "<answer>angry</answer>."},
             *s4_rows()]
    preds = out / "preds.jsonl"
    preds.write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    report = score_files(family(), ["ks", "cremad", "s4"], [str(preds)], data_root=str(data))
    tables = {t.task: t for t in report.tables}
    assert values(tables["ks"]) == {"accuracy": (0.5, 2)} and values(tables["cremad"]) == {"accuracy": (1.0, 1)}
    assert tables["s4"].scored == 4 and len(report.unusable) == 1
    fam = family()
    monkeypatch.setattr(families, "get", lambda name: fam)
    rc = evaluate_cli.main(["--family", "crab_plus", "--task", "all", "--predictions", str(preds),
                            "--data-root", str(data), "--skip-unparsable", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "== s4" in printed and "== ref_avs" not in printed  # all = the family's tasks the file holds
    result = json.loads((tmp_path / "r.json").read_text())
    assert sorted(result["tasks"]) == ["cremad", "ks", "s4"]
    ks = result["tasks"]["ks"]
    assert ks["metrics"] == [{"name": "accuracy", "value": 1.0, "n": 1}] and ks["skipped"] == 1
    assert result["tasks"]["s4"]["skipped"] == 2


def test_every_test_task_has_a_scorer_and_a_headline():
    from crab_jax.data.records.crab_plus import CRAB_PLUS_TASKS, CRAB_PLUS_TRAIN_ONLY
    tests = {t for t in CRAB_PLUS_TASKS if t not in CRAB_PLUS_TRAIN_ONLY}
    assert tests <= set(scoring.TASK_SCORERS) and set(scoring.TASK_SCORERS) == set(scoring.HEADLINE)
    for task, factory in scoring.TASK_SCORERS.items():
        scorer = factory(ctx("."))
        assert scorer.name == task and isinstance(scorer.required_fields, tuple)
