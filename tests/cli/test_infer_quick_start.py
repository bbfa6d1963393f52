"""``python -m crab_jax.infer --weights W --input samples.json ...`` against the original's greedy
generation (fixture ``generate/``): W converted from crab_full's user files; one run at batch 1
with ``--tokenizer``, one at batch 2 from a W holding its tokenizer with two bad items added
(a missing and a corrupt media file). Samples, N and tasks come from the manifest."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from crab_jax.checkpoints.convert.output import TOKENIZER_DIR
from crab_jax.cli.convert_weights.cli import main as convert_main
from crab_jax.cli.infer import main
from tests.families.crab import generate_fixture_helpers as G

BATCHED = 2  # the batch size of the second run (> 1: left pads, filler rows)
LENGTH_MULTIPLE = 256  # few length buckets: few compiles


def _argv(weights, inputs, media, out, manifest, *extra):
    n = G.generate_manifest(manifest)["config"]["max_new_tokens"]
    return [str(a) for a in ("--weights", weights, "--input", inputs, "--media-root", media, "--output", out,
                             "--max-new-tokens", n, "--length-multiple", LENGTH_MULTIPLE, "--no-progress", *extra)]


def _read_lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def _bad_items(items: list[dict], media, bad_dir) -> list[dict]:
    """A copy of a video item whose video is missing and of an image item whose image is corrupt."""
    out = []
    video = next((it for it in items if "video_path" in it), None)
    if video is not None:
        out.append({**video, "video_path": "bad/missing_" + os.path.basename(video["video_path"])})
    image = next((it for it in items if "image_path" in it), None)
    if image is not None:
        name = os.path.basename(image["image_path"])
        (bad_dir / name).write_bytes(b"\xff\xd8 this is no JPEG")
        out.append({**image, "image_path": "bad/" + name})
    return out


@pytest.fixture(scope="module")
def runs(converted_crab, fixtures_dir, manifest, tmp_path_factory):
    """``b1`` / ``b2``: (exit code, lines) of the two runs; ``b2_index``: the fixture sample of each
    ``b2`` line (None for a bad item); ``bad``: the bad items; ``out_dir``: both outputs' folder."""
    weights, _ = converted_crab
    tokenizer = fixtures_dir / "crab_full" / "tokenizer_mm"
    tmp = tmp_path_factory.mktemp("quick_start")
    code1 = main(_argv(weights, G.quick_start_input(fixtures_dir), G.media_root(fixtures_dir), tmp / "b1.jsonl",
                       manifest, "--tokenizer", tokenizer))
    # W with its tokenizer stored (what to-jax --tokenizer writes), media root with a bad folder.
    stored = tmp / "weights_with_tokenizer"
    shutil.copytree(weights, stored)
    shutil.copytree(tokenizer, stored / TOKENIZER_DIR)
    media = tmp / "media"
    media.mkdir()
    for entry in os.listdir(G.media_root(fixtures_dir)):
        os.symlink(G.media_root(fixtures_dir) / entry, media / entry)
    (media / "bad").mkdir()
    items = G.input_items(fixtures_dir)
    bad = _bad_items(items, media, media / "bad")
    mixed, index = [items[0]] + bad[:1] + items[1:] + bad[1:], [0, None] + list(range(1, len(items))) + [None] * len(bad[1:])
    (tmp / "mixed.json").write_text(json.dumps(mixed))
    code2 = main(_argv(stored, tmp / "mixed.json", media, tmp / "b2.jsonl", manifest, "--batch-size", BATCHED,
                       "--masks-dir", tmp / "b2_masks"))
    return {"b1": (code1, _read_lines(tmp / "b1.jsonl")), "b2": (code2, _read_lines(tmp / "b2.jsonl")),
            "b2_index": index, "bad": bad, "out_dir": tmp}


pytestmark = [pytest.mark.parity, pytest.mark.slow]


def _predicted(runs, name):
    """``[(fixture sample index, line)]`` of a run's predicted lines."""
    code, lines = runs[name][:2]
    assert code == 0
    index = runs["b2_index"] if name == "b2" else list(range(len(lines)))
    assert len(index) == len(lines)
    return [(i, line) for i, line in zip(index, lines) if i is not None]


@pytest.mark.parametrize("name", ["b1", "b2"])
def test_ids_and_text_equal_the_originals(runs, fixtures_dir, manifest, name):
    ref = np.load(fixtures_dir / "generate" / "generate.npz")
    samples = G.generate_manifest(manifest)["samples"]
    predicted = _predicted(runs, name)
    assert [i for i, _ in predicted] == list(range(len(samples)))
    for i, line in predicted:
        s = samples[i]
        want = ref[f"s{i}_generated_ids"].tolist()
        k = G.compared_steps(s, len(want))
        assert line["task"] == s["task"] and "error" not in line
        assert line["generated_ids"][:k] == want[:k], f"sample {i} ({s['task']}): ids differ before step {k}"
        if k == len(want):
            assert line["generated_ids"] == want
            assert line["predict"] == G.expected_text(s), f"sample {i} ({s['task']})"
            assert line["finished"] == s["stopped_on_eos"]
        print(f"{name} sample {i} {s['task']}: {k}/{len(want)} ids compared, equal")


@pytest.mark.parametrize("name", ["b1", "b2"])
def test_masks_only_with_six_generated_mask_tokens(runs, manifest, name):
    samples = G.generate_manifest(manifest)["samples"]
    for i, line in _predicted(runs, name):
        s = samples[i]
        if "generated_masks" not in s:  # not a segmentation sample
            assert "pred_mask_path" not in line
            continue
        assert line["mask_tokens"] == s["mask_tokens_emitted"]
        assert ("pred_mask_path" in line) == bool(s["generated_masks"])
        if s["generated_masks"]:
            assert os.path.isfile(runs["out_dir"] / line["pred_mask_path"])


def test_bad_items_fail_alone_with_path_and_reason(runs):
    code, lines = runs["b2"]
    assert code == 0
    bad_lines = [line for i, line in zip(runs["b2_index"], lines) if i is None]
    assert len(bad_lines) == len(runs["bad"])
    for item, line in zip(runs["bad"], bad_lines):
        bad_path = item.get("video_path") if item.get("video_path", "").startswith("bad/") else item["image_path"]
        assert "predict" not in line and bad_path in line["error"], line
        assert line["task"] == item["task"]


def test_every_item_failing_exits_1(converted_crab, fixtures_dir, manifest, tmp_path):
    weights, _ = converted_crab
    items = [{**it, "audio_path": "missing/" + os.path.basename(it["audio_path"])} for it in G.input_items(fixtures_dir)]
    (tmp_path / "all_bad.json").write_text(json.dumps(items))
    code = main(_argv(weights, tmp_path / "all_bad.json", G.media_root(fixtures_dir), tmp_path / "p.jsonl", manifest,
                      "--tokenizer", fixtures_dir / "crab_full" / "tokenizer_mm"))
    assert code == 1
    assert all("missing/" in line["error"] for line in _read_lines(tmp_path / "p.jsonl"))


def test_no_tokenizer_is_a_clear_error(converted_crab, fixtures_dir, manifest, tmp_path, capsys):
    weights, _ = converted_crab
    code = main(_argv(weights, G.quick_start_input(fixtures_dir), G.media_root(fixtures_dir), tmp_path / "p.jsonl",
                      manifest))
    assert code == 2
    err = capsys.readouterr().err
    assert "no tokenizer" in err and "--tokenizer" in err and not (tmp_path / "p.jsonl").exists()


def test_to_jax_stores_the_tokenizer_atomically(fixtures_dir, tmp_path):
    tokenizer = fixtures_dir / "crab_full" / "tokenizer_mm"
    component = f"seg_module={fixtures_dir / 'seg_module' / 'seg_module.safetensors'}"
    assert convert_main(["to-jax", "--out", str(tmp_path / "w"), "--component", component,
                         "--tokenizer", str(tokenizer)]) == 0
    stored = tmp_path / "w" / TOKENIZER_DIR
    assert sorted(os.listdir(stored)) == sorted(os.listdir(tokenizer))
    for name in os.listdir(tokenizer):
        assert (stored / name).read_bytes() == (tokenizer / name).read_bytes()
    # a bad tokenizer folder: nothing written
    assert convert_main(["to-jax", "--out", str(tmp_path / "w2"), "--component", component,
                         "--tokenizer", str(tmp_path / "nowhere")]) == 1
    assert not (tmp_path / "w2").exists()
