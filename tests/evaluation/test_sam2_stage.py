"""The SAM2 second stage on a tiny SAM 2.1 over the example S4 / MS3 frames: lines in order, the
contract's fields, masks equal to HF ``Sam2Model``'s for the same prompts on the same LANCZOS
frame, invalid answers and unreadable frames counted."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from crab_jax.evaluation import sam2_stage
from crab_jax.evaluation.sam2_stage import (FRAME_SIZE, IMAGE_UNREADABLE, OUTPUT_FILE, SUMMARY_FILE, Sam2Predictor,
                                            load_frame, run_stage)
from crab_jax.families import get
from crab_jax.families.crab_plus import mask_prompts
from tests.sam2_tiny import MEDIA, hf_mask_logits, jax_model

FAMILY = get("crab_plus")
# A logit this close to 0 (relative to the largest; 20x the parity error seen) may take either sign.
SURE = 1e-5
# ... and few pixels are that close (a mask edge crosses 0 smoothly).
MAX_UNSURE = 0.002


def lines(root):
    absolute_ms3 = str(root / "ms3" / "1.jpg")
    return [
        {"task": "s4", "image_path": "s4/0.jpg", "predict": "box [30,40,180,200] then [60,80] [100,120]</s>[1,1]"},
        {"task": "ms3", "image_path": absolute_ms3, "predict": "[20,30] [100,100] [200,150] [50,60]"},
        {"task": "avqa", "image_path": "nowhere.jpg", "predict": "<answer>two</answer>", "extra": [1, 2]},
        {"task": "s4", "image_path": "s4/0.jpg", "predict": "a dog barking"},
        {"task": "ms3", "image_path": "ms3/1.jpg", "predict": "[10,20,100,120]"},
        {"task": "ref_avs", "image_path": "s4/0.jpg", "predict": "<answer>false</answer>", "split": "test_n"},
        {"task": "ref_avs", "image_path": absolute_ms3, "predict": "<answer>true</answer> [10,10,100,90]"},
        {"task": "s4", "image_path": "s4/missing.jpg", "predict": "[1,1,50,50] [5,5]"},
        {"task": "ms3", "image_path": "ms3/broken.jpg", "predict": "[1,1] [2,2] [3,3]"},
        {"task": "ref_avs", "image_path": "ms3/1.jpg", "predict": "<answer>true</answer> [150,60]"},
        {"task": "s4", "image_path": "s4/0.jpg", "predict": "[10,20,300,120] [5,5]"},
        {"task": "s4", "image_path": "s4/0.jpg", "error": "s4/audio.wav: unreadable"},
    ]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    if not MEDIA.is_dir():
        pytest.skip(f"example media not found at {MEDIA}")
    root = tmp_path_factory.mktemp("media")
    for task, name in (("s4", "0.jpg"), ("ms3", "1.jpg")):
        (root / task).mkdir()
        shutil.copy(MEDIA / task / name, root / task / name)
    (root / "ms3" / "broken.jpg").write_text("not a jpeg")
    return root


@pytest.fixture(scope="module")
def model():
    return jax_model()


@pytest.fixture(scope="module")
def staged(data_root, model, tmp_path_factory):
    src = data_root / "preds.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines(data_root)))
    out = tmp_path_factory.mktemp("sam2")
    summary = run_stage(FAMILY, str(src), model, str(out), data_root=str(data_root), batch_size=2, progress=False)
    got = [json.loads(x) for x in (out / OUTPUT_FILE).read_text().splitlines()]
    return dict(summary=summary, out=out, got=got, src=lines(data_root))


def read_mask(out, line):
    return np.asarray(Image.open(out / line["pred_mask_path"]).convert("L"))


def reference_frame(path):
    with Image.open(path) as img:  # the original's load_and_resize_image, written out here
        return np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.LANCZOS))


def test_every_line_in_order_other_tasks_untouched(staged):
    got, src = staged["got"], staged["src"]
    assert len(got) == len(src)
    for g, s in zip(got, src):
        assert {k: g[k] for k in s} == s  # every input field kept
    assert got[2] == src[2]  # avqa: no mask, passed through as it was
    assert all("sam2_valid" in g for i, g in enumerate(got) if i != 2)


def test_contract_fields(staged):
    got = staged["got"]
    assert got[0]["sam2_box"] == [30, 40, 180, 200] and got[0]["sam2_points"] == [[60, 80], [100, 120]]
    assert got[1]["sam2_box"] is None and got[1]["sam2_points"] == [[100, 100], [200, 150], [50, 60]]
    assert [g["sam2_valid"] for g in got if "sam2_valid" in g] == [True, True, False, False, True, True, False, False,
                                                                     True, False, False]
    for g in got:
        if "sam2_valid" in g:
            assert ("pred_mask_path" in g) == g["sam2_valid"]
            assert (g["sam2_reason"] is None) == g["sam2_valid"]
    assert got[3]["sam2_reason"] == "no coordinates" and got[4]["sam2_reason"] == "insufficient coordinates"
    assert got[10]["sam2_reason"] == "box out of range" and got[11]["sam2_reason"] == sam2_stage.NO_PREDICTION
    assert got[5]["sam2_negative"] and not got[6]["sam2_negative"]


def test_unreadable_frames_fail_alone_with_path_and_reason(staged, data_root):
    got = staged["got"]
    for i, name in ((7, "s4/missing.jpg"), (8, "ms3/broken.jpg")):
        assert got[i]["sam2_valid"] is False and got[i]["sam2_reason"] == IMAGE_UNREADABLE
        assert got[i]["sam2_image_error"].startswith(str(data_root / name) + ": ")


def test_summary_counts_per_task_and_reason(staged):
    s = staged["summary"]
    assert s.lines == 12 and s.passed == 1
    assert dict(s.counts["s4"]) == {"valid": 1, "invalid: no coordinates": 1, f"invalid: {IMAGE_UNREADABLE}": 1,
                                    "invalid: box out of range": 1, f"invalid: {sam2_stage.NO_PREDICTION}": 1}
    assert dict(s.counts["ms3"]) == {"valid": 1, "invalid: insufficient coordinates": 1,
                                     f"invalid: {IMAGE_UNREADABLE}": 1}
    assert dict(s.counts["ref_avs"]) == {"negative": 1, "valid": 2}
    assert json.loads((staged["out"] / SUMMARY_FILE).read_text()) == s.as_json()
    text = s.format()
    assert "s4: 1 valid (0 negative), 4 invalid" in text and "insufficient coordinates: 1" in text


def test_masks_match_hf_sam2(staged, data_root):
    """Each valid line's PNG against HF Sam2Model on the same LANCZOS frame and prompt; and against
    another line's prompt on the same frame (a prompt mix-up would be seen)."""
    got, out = staged["got"], staged["out"]
    refs = {}
    for i in (0, 1, 6, 9):
        line = got[i]
        path = line["image_path"] if os.path.isabs(line["image_path"]) else data_root / line["image_path"]
        refs[i] = hf_mask_logits(reference_frame(path), line["sam2_box"], line["sam2_points"])
        mask = read_mask(out, line)
        assert mask.shape == (FRAME_SIZE, FRAME_SIZE) and set(np.unique(mask)) <= {0, 255}
        ref = refs[i]
        sure = np.abs(ref) > SURE * np.abs(ref).max()
        print(f"line {i}: mask covers {np.mean(mask > 0):.3f}, {np.sum(~sure)} pixels near 0")
        assert np.mean(~sure) < MAX_UNSURE
        np.testing.assert_array_equal((mask > 0)[sure], (ref > 0)[sure])
    for i, j in ((1, 6), (6, 9)):  # same frame, other prompt
        assert np.sum((read_mask(out, got[i]) > 0) != (refs[j] > 0)) > 100, (i, j)


def test_negative_mask_is_all_zero(staged):
    mask = read_mask(staged["out"], staged["got"][5])
    assert mask.shape == (FRAME_SIZE, FRAME_SIZE) and not mask.any()


def test_frame_loader_and_constants(data_root):
    np.testing.assert_array_equal(load_frame(str(data_root / "s4" / "0.jpg")), reference_frame(data_root / "s4" / "0.jpg"))
    assert FRAME_SIZE == mask_prompts.IMAGE_SIZE and sam2_stage.POINT_SLOTS == mask_prompts.MAX_POINTS


def test_refuses_to_overwrite_its_input(data_root, model, tmp_path):
    src = tmp_path / OUTPUT_FILE
    src.write_text("")
    with pytest.raises(ValueError, match="overwrite the predictions file"):
        run_stage(FAMILY, str(src), model, str(tmp_path), progress=False)


def test_bf16_autocast_is_close_to_float32(staged, data_root):
    """bf16 changes some pixels (so it is applied) but few (so it is the same computation)."""
    got = staged["got"][:2]
    frames = [load_frame(str(data_root / "s4" / "0.jpg")), load_frame(got[1]["image_path"])]
    prompts = [mask_prompts.mask_prompt(g["task"], g["predict"]) for g in got]
    bf16 = Sam2Predictor(jax_model(), 2, bf16=True)(frames, prompts)
    f32 = np.stack([read_mask(staged["out"], g) > 0 for g in got])
    agree = np.mean(bf16 == f32)
    print(f"bf16 vs float32 masks: {agree:.4f} of the pixels agree")
    assert 0.95 < agree < 1
