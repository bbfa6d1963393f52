"""Crab's task scorers on small hand-made predictions lines, with hand-computed expected values."""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from crab_jax.data.media.decode import AVSS_NUM_CLASSES, load_avss_mask, load_binary_mask
from crab_jax.data.records.record import Record
from crab_jax.evaluation.scoring import Context
from crab_jax.metrics.tables import UnusableRow
from crab_jax.families.crab import scoring, task_scorers as TS

MEDIA = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "media"


def ctx(root, *, skip=False, file="preds.jsonl"):
    return Context(str(root), (str(root),), file, skip)


def scored(task, rows, root=".", skip=False, file="preds.jsonl"):
    c = ctx(root, skip=skip, file=file)
    scorer = scoring.TASK_SCORERS[task](c)
    for row in rows:
        scorer.add(row, c)
    return scorer.table()


def values(table):
    return {m.name: (m.value, m.n) for m in table.metrics}


# ----------------------------------------------------------------------------- metadata


def test_prediction_metadata_has_the_original_fields_and_the_reference():
    rec = Record(family="crab", task="avqa", mode="test", split="test", source="music_avqa/test_samples.json#3",
                 videos=("music_avqa/v.mp4",), audios=("music_avqa/a.mp3",), question="How many?", gt="two",
                 fields={"type": '["Audio", "Counting"]', "video_id": "v", "question_id": 7})
    m = scoring.prediction_metadata(rec)
    assert m["instruction"].startswith("<s>[INST] <<SYS>>") and "Please answer this question: How many?" in m["instruction"]
    assert m["output"] == "two" and m["video_path"] == "music_avqa/v.mp4" and m["audio_path"] == "music_avqa/a.mp3"
    assert (m["question_type"], m["vid"], m["qid"]) == ('["Audio", "Counting"]', "v", 7)
    assert m["reference"] == {"answer": "two", "type": '["Audio", "Counting"]'}
    assert (m["task"], m["split"], m["source"]) == ("avqa", "test", "music_avqa/test_samples.json#3")
    json.dumps(m)
    seg = Record(family="crab", task="ref-avs", mode="test", split="test_u", source="s#0", frame_paths=("f/0.jpg",),
                 image_path="f/3.jpg", audios=("a.wav",), mask_path="gt/00003.png", frame_idx=3,
                 fields={"exp": "the dog"}, gt="the dog is <mask_start>")
    assert scoring.prediction_metadata(seg)["reference"] == {"mask_path": "gt/00003.png", "frame_idx": 3,
                                                             "split": "test_u", "exp": "the dog"}


# ----------------------------------------------------------------------------- text tasks


AUDIO_COUNT, AV_TEMPORAL = '["Audio", "Counting"]', '["Audio-Visual", "Temporal"]'


def avqa_row(pred, answer, kind):
    return {"predict": f"<s> So the answer is <answer> {pred} </answer>.</s>" if pred else "<s> no tag </s>",
            "reference": {"answer": answer, "type": kind}}


def test_avqa_accuracy_overall_and_per_type_counts_unparsable_as_wrong():
    rows = [avqa_row("Two", "two", AUDIO_COUNT), avqa_row("three", "two", AUDIO_COUNT),
            avqa_row("yes", "yes", AV_TEMPORAL), avqa_row(None, "no", AV_TEMPORAL)]
    t = scored("avqa", rows)
    v = values(t)
    assert v["accuracy"] == (0.5, 4)
    assert v["Audio/Counting"] == (0.5, 2) and v["Audio/avg"] == (0.5, 2)
    assert v["Audio-Visual/Temporal"] == (0.5, 2)
    assert (t.scored, t.unparsable, t.skipped) == (4, 1, 0)
    t = scored("avqa", rows, skip=True)
    assert values(t)["accuracy"] == (pytest.approx(2 / 3), 3) and (t.scored, t.skipped) == (3, 1)


def test_avqa_reads_the_originals_lines_and_reports_a_bad_type():
    original = {"instruction": "...", "output": "Two</s>", "question_type": AUDIO_COUNT, "vid": "1", "qid": 2,
                "predict": "<s><answer> two </answer></s>"}
    assert values(scored("avqa", [original]))["accuracy"] == (1.0, 1)
    with pytest.raises(UnusableRow, match="question type"):
        scored("avqa", [dict(original, question_type="Audio Counting")])
    with pytest.raises(UnusableRow, match="'output'"):
        scored("avqa", [{"predict": "x", "question_type": AUDIO_COUNT}])


def test_ave_segment_accuracy_from_records_and_from_the_originals_gt_string():
    rows = [{"predict": "<event> Dog barking </event> <range> 2,6 </range>",
             "reference": {"event": "dog barking", "start_time": 2, "end_time": 8}},   # 8 of 10 slots
            {"predict": "nothing", "output": "event:Church bell start_time:0 end_time:3</s>"},  # 7 of 10
            {"error": "video missing", "reference": {"event": "cat", "start_time": 0, "end_time": 10}}]  # 0 of 10
    t = scored("ave", rows)
    assert values(t)["segment accuracy"] == (pytest.approx(15 / 30), 3)
    assert t.unparsable == 2
    with pytest.raises(UnusableRow, match="event:E"):
        scored("ave", [{"predict": "x", "output": "Church bell, 0 to 3"}])


def test_avvp_segment_and_event_level_by_hand():
    # GT: audio Speech 0-10, visual Speech 0-5. Prediction: audio and visual Speech 0-10.
    row = {"predict": "<visual_event>Speech,(0 10)</visual_event><audio_event>Speech,(0 10)</audio_event>",
           "reference": {"event": "<audio>Speech,(0 10)</audio><visual>Speech,(0 5)</visual>"}}
    v = values(scored("avvp", [row]))
    # segment level: audio 1; visual TP 5 FP 5 -> 10/15; AV (= visual here) 10/15; pooled TP 15 FP 5 -> 30/35
    assert v["segment Audio"] == (pytest.approx(1.0), 1)
    assert v["segment Visual"][0] == pytest.approx(2 / 3)
    assert v["segment Audio-Visual"][0] == pytest.approx(2 / 3)
    assert v["segment Type@AV"][0] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert v["segment Event@AV"][0] == pytest.approx(30 / 35)
    # event level: [0,10) vs [0,5) has IoU 0.5 >= 0.5, so every event matches
    assert all(v[f"event {k}"][0] == pytest.approx(1.0) for k in ("Audio", "Visual", "Audio-Visual", "Event@AV"))


def test_avvp_unparsable_and_unknown_classes_are_reported():
    gt = {"event": "<audio>Dog,(0 10)</audio><visual>Dog,(0 10)</visual>"}
    t = scored("avvp", [{"predict": "I hear a dog", "reference": gt},
                        {"predict": "<audio>Dog,(0 10)</audio><visual>Wolf,(0 10)</visual>", "reference": gt}])
    assert t.unparsable == 1 and t.scored == 2
    assert any("'Wolf' x1" in n for n in t.notes)
    # video 1: nothing predicted, F 0; video 2: audio right (1), visual nothing (0)
    assert values(t)["segment Audio"] == (pytest.approx(0.5), 2)
    with pytest.raises(UnusableRow, match="LLP"):
        scored("avvp", [{"predict": "x", "reference": {"event": "<audio>Wolf,(0 2)</audio>"}}])


def test_arig_box_scores_against_record_fields_and_the_original_string():
    rows = [{"predict": "The sounding object is dog. Its coordinates are <obj>(0,0)(10,10)</obj>.",
             "reference": {"top_left": [0, 0], "bottom_right": [10, 10]}},
            {"predict": "<obj>(0,0)(10,40)</obj>",
             "output": "The sounding object is cat. Its coordinates are <obj>(0,0)(10,10)</obj>.</s>"},  # IoU 1/4
            {"predict": "no box", "reference": {"top_left": [5, 5], "bottom_right": [9, 9]}}]  # IoU 0
    t = scored("arig", rows)
    v = values(t)
    one = 100 / (100 + 1e-6)
    assert v["mIoU"] == (pytest.approx((one + 100 / (400 + 1e-6)) / 3), 3)
    assert v["cIoU"][0] == pytest.approx(1 / 3)
    assert t.unparsable == 1


def test_captions_reach_the_kernel_with_their_references(monkeypatch):
    calls = []  # what the caption kernel is given (the real one runs Java METEOR: tests/metrics)

    def fake_caption_scores(predictions, references):
        calls.append((dict(predictions), dict(references)))
        return {"CIDEr": 0.5}

    monkeypatch.setattr(TS.captions, "caption_scores", fake_caption_scores)
    rows = [{"predict": "<s> A dog barks.</s>", "reference": {"desc": "a dog is barking"}},
            {"predict": "<s></s>", "output": "a man sings</s>"}]
    t = scored("avcap", rows)
    assert values(t) == {"CIDEr": (0.5, 2)} and t.unparsable == 1
    preds, refs = calls[-1]
    assert sorted(preds.values()) == ["", "A dog barks."]
    assert sorted(r[0] for r in refs.values()) == ["a dog is barking", "a man sings"]


# ----------------------------------------------------------------------------- masks from PNG files


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    for task, name in (("s4", "0.png"), ("ms3", "1.png"), ("avss", "0.png")):
        (root / task).mkdir()
        shutil.copy(MEDIA / task / name, root / task / name)
    return root


def f_all_on(gt):
    """F of a prediction whose sigmoid is 0.5 everywhere: only thresholds <= 0.5 predict, all pixels."""
    p = gt.sum() / gt.size
    return 1.3 * p / (0.3 * p + 1)


@pytest.mark.parametrize("task,name", [("s4", "0.png"), ("ms3", "1.png")])
def test_binary_masks_scored_from_png_files(seg_root, task, name):
    gt = load_binary_mask(seg_root / task / name)[0]
    assert 0 < gt.sum() < gt.size
    png(seg_root / "pred" / task / "right.png", (gt * 255).astype(np.uint8))
    png(seg_root / "pred" / task / "empty.png", np.zeros_like(gt, np.uint8))
    np.save(seg_root / "pred" / task / "right.npy", np.where(gt > 0, 8.0, -8.0).astype(np.float32))
    ref = {"mask_path": f"{task}/{name}", "frame_idx": 0}
    rows = [{"predict": "x", "reference": ref, "pred_mask_path": f"pred/{task}/right.png"},
            {"predict": "x", "reference": ref, "pred_mask_path": f"pred/{task}/empty.png"},
            {"predict": "x", "reference": ref, "pred_logits_path": f"pred/{task}/right.npy",
             "pred_mask_path": f"pred/{task}/empty.png"},   # logits win over the PNG
            {"predict": "x", "reference": ref}]             # no mask: wrong everywhere
    t = scored(task, rows, seg_root)
    v = values(t)
    # J: 1, 0, 1, 0. F: 1, F(all on), 1, F at threshold 0 (every pixel >= 0, the same all-on value).
    assert v["J (mIoU)"] == (pytest.approx(0.5, abs=1e-6), 4)
    assert v["F"][0] == pytest.approx((2 + 2 * f_all_on(gt)) / 4, rel=1e-5)
    assert t.unparsable == 1
    skipped = scored(task, rows, seg_root, skip=True)
    assert values(skipped)["J (mIoU)"] == (pytest.approx(2 / 3, abs=1e-6), 3) and skipped.skipped == 1
    with pytest.raises(UnusableRow, match="GT mask"):
        scored(task, [{"predict": "x", "reference": {"mask_path": "nowhere/0.png"}}], seg_root)


def test_ref_avs_splits_from_reference_and_from_the_originals_folders(seg_root):
    gt = load_binary_mask(seg_root / "s4" / "0.png")[0]
    right = png(seg_root / "ra" / "right_pred.png", (gt * 255).astype(np.uint8))
    full = png(seg_root / "ra" / "full_pred.png", np.full_like(gt, 255, np.uint8))
    empty = png(seg_root / "ra" / "empty_gt.png", np.zeros_like(gt, np.uint8))
    rows = [{"predict": "x", "reference": {"mask_path": "s4/0.png", "split": "test_s"},
             "pred_mask_path": str(right)},
            {"predict": "x", "reference": {"mask_path": "s4/0.png", "split": "test_u"}, "pred_mask_path": str(full)}]
    v = values(scored("ref-avs", rows, seg_root))
    assert v["seen J (mIoU)"] == (pytest.approx(1.0, abs=1e-6), 1)
    assert v["unseen J (mIoU)"][0] == pytest.approx(gt.sum() / gt.size, rel=1e-5)
    # The original's null lines: gt_path / pred_path / s; the split comes from "s"
    null = [{"image_path": "/a/7.jpg", "gt_path": str(empty), "pred_path": str(full), "s": 1.0, "output": "x"},
            {"image_path": "/a/8.jpg", "gt_path": str(empty), "pred_path": str(empty), "s": 0.0, "output": "x"}]
    v = values(scored("ref-avs", null, seg_root))
    assert v == {"null S (lower is better)": (pytest.approx(0.5), 2)}
    # seen / unseen lines of the original say their split only in the folder name
    seen = {"image_path": "/a/7.jpg", "gt_path": str(seg_root / "s4" / "0.png"), "pred_path": str(right),
            "label": "x", "output": "x", "iou": 1.0, "fscore": 1.0}
    v = values(scored("ref-avs", [seen], seg_root, file="ckpt/inference_ref_avs_test_u_bs/inference_results.jsonl"))
    assert v["unseen J (mIoU)"] == (pytest.approx(1.0, abs=1e-6), 1)
    with pytest.raises(UnusableRow, match="split"):
        scored("ref-avs", [seen], seg_root, file="results.jsonl")


def test_avss_class_maps_from_palette_pngs(seg_root):
    gt = load_avss_mask(seg_root / "avss" / "0.png")[0]
    present = np.unique(gt)
    assert len(present) >= 2
    pred = Image.fromarray(gt.astype(np.uint8), mode="P")
    pred.putpalette([0] * 768)
    pred.save(seg_root / "avss" / "pred.png")
    rows = [{"predict": "x", "reference": {"mask_path": "avss/0.png"}, "pred_mask_path": "avss/pred.png"}]
    v = values(scored("avss", rows, seg_root))
    # every present class has IoU 1 and F 1, the others never occur (0): means over 71 and 70 classes
    assert v["mIoU"] == (pytest.approx(len(present) / AVSS_NUM_CLASSES, rel=1e-6), 1)
    assert v["F"][0] == pytest.approx(len(present) / AVSS_NUM_CLASSES, rel=1e-6)
    no_last = len([c for c in present if c != AVSS_NUM_CLASSES - 1])
    assert v["mIoU_noBg"][0] == pytest.approx(no_last / (AVSS_NUM_CLASSES - 1), rel=1e-6)
    missing = scored("avss", [{"predict": "x", "reference": {"mask_path": "avss/0.png"}}], seg_root)
    assert missing.unparsable == 1 and values(missing)["mIoU"][0] == 0.0
    assert not math.isnan(values(missing)["F"][0])
