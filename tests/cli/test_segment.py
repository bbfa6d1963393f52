"""``python -m crab_jax.segment``: the SAM2 stage from the command line, on a tiny SAM 2.1."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from crab_jax.cli.segment import build_parser, main
from crab_jax.evaluation.sam2_stage import OUTPUT_FILE, SUMMARY_FILE, load_frame
from tests.sam2_tiny import MEDIA, hf_mask_logits, save_hf_dir, save_original_pt

LINES = [
    {"task": "s4", "image_path": "s4/0.jpg", "predict": "[30,40,180,200] [60,80] [100,120]"},
    {"task": "ms3", "image_path": "ms3/missing.jpg", "predict": "[1,1] [2,2] [3,3]"},
    {"task": "ave", "predict": "event:dog start_time:0 end_time:3"},
    {"task": "s4", "image_path": "s4/0.jpg", "predict": "[1,1] [2,2]"},
]


def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not MEDIA.is_dir():
        pytest.skip(f"example media not found at {MEDIA}")
    d = tmp_path_factory.mktemp("segment")
    (d / "root" / "s4").mkdir(parents=True)
    shutil.copy(MEDIA / "s4" / "0.jpg", d / "root" / "s4" / "0.jpg")
    preds = d / "preds.jsonl"
    preds.write_text("".join(json.dumps(x) + "\n" for x in LINES))
    return dict(dir=d, root=d / "root", preds=preds, hf=save_hf_dir(d / "sam2_hf"))


def test_segment_end_to_end(setup):
    out = setup["dir"] / "out"
    code, text = run("--predictions", setup["preds"], "--sam2", setup["hf"], "--data-root", setup["root"],
                     "--out", out, "--batch-size", 2, "--no-progress")
    assert code == 0, text
    assert "s4: 1 valid (0 negative), 1 invalid" in text and "insufficient coordinates: 1" in text
    assert "image not readable: 1" in text and "1 passed through" in text
    got = [json.loads(x) for x in (out / OUTPUT_FILE).read_text().splitlines()]
    assert [g["task"] for g in got] == [x["task"] for x in LINES] and got[2] == LINES[2]
    assert [g.get("sam2_valid") for g in got] == [True, False, None, False]
    assert json.loads((out / SUMMARY_FILE).read_text())["lines"] == 4
    assert_matches_hf(out, got[0], setup["root"])


def assert_matches_hf(out, line, root):
    """The line's PNG is HF Sam2Model's mask for its prompt (pixels not within float noise of 0)."""
    mask = np.asarray(Image.open(out / line["pred_mask_path"]).convert("L")) > 0
    ref = hf_mask_logits(load_frame(str(root / line["image_path"])), line["sam2_box"], line["sam2_points"])
    sure = np.abs(ref) > 1e-5 * np.abs(ref).max()
    np.testing.assert_array_equal(mask[sure], (ref > 0)[sure])


def test_pt_with_its_config(setup):
    pt = save_original_pt(setup["dir"] / "sam2.pt")
    out = setup["dir"] / "out_pt"
    code, text = run("--predictions", setup["preds"], "--sam2", pt, "--sam2-config", setup["hf"], "--data-root",
                     setup["root"], "--out", out, "--batch-size", 2, "--no-progress")
    assert code == 0, text
    assert_matches_hf(out, json.loads((out / OUTPUT_FILE).read_text().splitlines()[0]), setup["root"])
    # without --sam2-config the .pt is read as Hiera-L: every mismatch is named, exit 2
    code, text = run("--predictions", setup["preds"], "--sam2", pt, "--out", setup["dir"] / "x", "--no-progress")
    assert code == 2 and "expected shape" in text


def test_usage_errors(setup, tmp_path):
    code, text = run("--predictions", tmp_path / "none.jsonl", "--sam2", setup["hf"], "--out", tmp_path)
    assert code == 2 and "no such file" in text
    code, text = run("--predictions", setup["preds"], "--sam2", setup["hf"], "--out", tmp_path, "--family", "crab")
    assert code == 2 and "no SAM2 stage" in text
    code, text = run("--predictions", setup["preds"], "--sam2", tmp_path / "nothing", "--out", tmp_path)
    assert code == 1 and "no such SAM2" in text
    assert "--bf16" in build_parser().format_help() and "sam2_predictions.jsonl" in build_parser().format_help()
