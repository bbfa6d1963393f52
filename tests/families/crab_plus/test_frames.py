"""Crab+'s image / video preprocessing against the original's processor outputs (thinker_av)."""

from __future__ import annotations

import json
import pathlib

import av
import numpy as np
import pytest
import torch

from crab_jax.families.crab_plus import frames as F
from crab_jax.families.crab_plus.layout import thinker_batch
from tests.conftest import assert_parity
from tests.families.crab_plus.thinker_helpers import MODEL_DIR, fixture_arrays, fixture_config, tolerance

FIXTURE = "thinker_av"


def media_path(fixtures_dir: pathlib.Path, record_path: str) -> pathlib.Path:
    """``AVUIE_2/<task>/<dir>/<file>`` -> ``shared/media/<task>/<file>`` (the fixture's media)."""
    parts = pathlib.PurePosixPath(record_path).parts
    return fixtures_dir.parent.parent / "media" / parts[1] / parts[-1]


def media_items(fixtures_dir, manifest) -> list[tuple[str, list[dict]]]:
    """Per sample: its task and its user turn's image / video items, in content order."""
    config = manifest["fixtures"][FIXTURE]["config"]
    out = []
    for task, conv in zip(config["tasks"], config["conversations"]):
        items = [dict(c) for turn in conv if turn["role"] == "user" for c in turn["content"]
                 if c["type"] in ("image", "video")]
        for c in items:
            c["path"] = media_path(fixtures_dir, c[c["type"]])
        out.append((task, items))
    return out


@pytest.fixture(scope="module")
def spec(crab_plus_fixtures_dir) -> F.PatchSpec:
    with open(crab_plus_fixtures_dir / MODEL_DIR / "preprocessor_config.json") as f:
        return F.PatchSpec.from_preprocessor_config(json.load(f))


@pytest.fixture(scope="module")
def ours(crab_plus_fixtures_dir, crab_plus_manifest, spec):
    """Our processor outputs for the fixture batch + the decoded videos."""
    images, videos, decoded = [], [], []
    for task, items in media_items(crab_plus_fixtures_dir, crab_plus_manifest):
        clips = []
        for c in items:
            size = (c["resized_height"], c["resized_width"])
            assert size[0] == size[1], "Crab+ resizes to squares"
            if c["type"] == "image":
                images.append(F.patch_rows(F.read_image(c["path"], size[0]), spec))
            else:
                clips.append(F.read_video(c["path"], c["nframes"], size[0]))
        decoded += clips
        if clips:
            frames = [v.frames for v in clips]
            # a2v: both videos concatenated in time into one (the original's torch.cat).
            videos += [F.patch_rows(F.concat_videos(frames), spec)] if task == "a2v" else \
                [F.patch_rows(v, spec) for v in frames]
    return F.vision_inputs(images, videos, spec), decoded


def fixture_frames(rows: np.ndarray, grids: np.ndarray, spec: F.PatchSpec) -> list[np.ndarray]:
    """Inverts the processor's permute: pixel rows -> ``[T, C, H, W]`` frames 0..255 (float)."""
    p, m, tp, c = spec.patch_size, spec.merge_size, spec.temporal_patch_size, len(spec.mean)
    out, start = [], 0
    for t, h, w in grids:
        n = int(t * h * w)
        x = rows[start:start + n].reshape(t, h // m, w // m, m, m, c, tp, p, p).transpose(0, 6, 5, 1, 3, 7, 2, 4, 8)
        x = x.reshape(t * tp, c, h * p, w * p)
        out.append((x * np.asarray(spec.std, np.float32)[:, None, None] + np.asarray(spec.mean, np.float32)[:, None, None]) * 255)
        start += n
    return out


def test_round_nframes_and_indices_match_torch():
    assert [F.round_nframes(n) for n in (10, 4, 5, 7, 1, 3)] == [10, 4, 4, 8, 0, 4]  # Python round: half to even
    for total in list(range(2, 60)) + [249, 250, 251, 1000, 1001, 7919]:
        for n in (2, 4, 10, 16, 20):
            ref = torch.linspace(0, total - 1, n).round().long().numpy()
            assert np.array_equal(F.frame_indices(total, n), ref), (total, n)


def test_frame_indices_as_manifest(crab_plus_fixtures_dir, crab_plus_manifest, ours):
    decode = [v for s in crab_plus_manifest["fixtures"][FIXTURE]["config"]["media_decode"] for v in s["videos"]]
    _, decoded = ours
    assert len(decode) == len(decoded)
    for ref, got in zip(decode, decoded):
        assert F.frame_indices(ref["frames_in_file"], ref["nframes"]).tolist() == ref["frame_indices"]
        assert got.fallback == "none" and got.errors == ()
        assert got.frames_in_file == ref["frames_in_file"] and got.indices.tolist() == ref["frame_indices"]


def test_video_rows_match_fixture(crab_plus_fixtures_dir, crab_plus_manifest, ours, spec):
    arrays = fixture_arrays(crab_plus_fixtures_dir, FIXTURE)
    got, _ = ours
    np.testing.assert_array_equal(got["video_grid_thw"], arrays["video_grid_thw"])
    np.testing.assert_array_equal(got["video_second_per_grid"], arrays["video_second_per_grid"])
    err = float(np.abs(got["pixel_values_videos"] - arrays["pixel_values_videos"]).max())
    print(f"pixel_values_videos max abs err {err:.3e}")
    assert_parity(got["pixel_values_videos"], arrays["pixel_values_videos"], "pixel_values_videos",
                  tolerance(crab_plus_manifest, FIXTURE))
    # Frames: integer-equal to the original's uint8 frames (PyAV here, decord there).
    for mine, ref in zip(fixture_frames(got["pixel_values_videos"], got["video_grid_thw"], spec),
                         fixture_frames(arrays["pixel_values_videos"], arrays["video_grid_thw"], spec)):
        assert np.abs(ref - np.round(ref)).max() < 1e-3, "the fixture's frames are integers"
        n_diff = int((np.round(mine) != np.round(ref)).sum())
        print(f"video frames {ref.shape}: {n_diff} integer values differ from the original's")
        assert n_diff == 0


def test_image_rows_match_fixture(crab_plus_fixtures_dir, crab_plus_manifest, ours):
    arrays = fixture_arrays(crab_plus_fixtures_dir, FIXTURE)
    got, _ = ours
    np.testing.assert_array_equal(got["image_grid_thw"], arrays["image_grid_thw"])
    err = float(np.abs(got["pixel_values"] - arrays["pixel_values"]).max())
    print(f"pixel_values max abs err {err:.3e}")
    assert_parity(got["pixel_values"], arrays["pixel_values"], "pixel_values", tolerance(crab_plus_manifest, FIXTURE))


def test_feeds_thinker_batch(crab_plus_fixtures_dir, crab_plus_manifest, ours):
    """Our outputs in place of the processor's give thinker_batch the same batch."""
    arrays = fixture_arrays(crab_plus_fixtures_dir, FIXTURE)
    cfg = fixture_config(crab_plus_fixtures_dir, crab_plus_manifest, FIXTURE)
    mine = thinker_batch({**arrays, **ours[0]}, cfg)
    ref = thinker_batch(arrays, cfg)
    assert mine.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(mine[k], ref[k], rtol=0, atol=1e-6, err_msg=k)


def test_negative_controls(crab_plus_fixtures_dir, crab_plus_manifest, ours, spec):
    """A wrong permute, or a resize without antialiasing, does not give the fixture's rows."""
    arrays = fixture_arrays(crab_plus_fixtures_dir, FIXTURE)
    got, decoded = ours
    ref, tol = arrays["pixel_values_videos"], tolerance(crab_plus_manifest, FIXTURE)
    p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    t, h, w = (int(v) for v in got["video_grid_thw"][0])
    n = t * h * w
    # the two merge axes swapped: (h-merge, w-merge) -> (w-merge, h-merge)
    wrong = got["pixel_values_videos"][:n].reshape(t, h // m, w // m, m, m, -1).swapaxes(3, 4).reshape(n, -1)
    with pytest.raises(AssertionError):
        assert_parity(wrong, ref[:n], "wrong merge order", tol)
    # columns (temporal, C) instead of (C, temporal)
    wrong = got["pixel_values_videos"][:n].reshape(n, 3, tp, p * p).swapaxes(1, 2).reshape(n, -1)
    with pytest.raises(AssertionError):
        assert_parity(wrong, ref[:n], "wrong column order", tol)
    # frames resized without antialiasing (from the same decoded frames, via torch)
    clip = next(c for _, items in media_items(crab_plus_fixtures_dir, crab_plus_manifest) for c in items
                if c["type"] == "video")
    with av.open(str(clip["path"])) as container:
        wanted = set(decoded[0].indices.tolist())
        raw = [fr.to_ndarray(format="rgb24") for i, fr in enumerate(container.decode(video=0)) if i in wanted
               ][:len(decoded[0].indices)]
    x = torch.from_numpy(np.stack(raw)).permute(0, 3, 1, 2).float()
    no_aa = torch.nn.functional.interpolate(x, size=decoded[0].frames.shape[-2:], mode="bicubic",
                                            align_corners=False, antialias=False).clamp(0, 255).round()
    rows = F.patch_rows(no_aa.numpy(), spec).rows
    with pytest.raises(AssertionError):
        assert_parity(rows, ref[:rows.shape[0]], "no antialias", tol)


def _write_clip(path: pathlib.Path, n_frames: int, size: int = 32) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            img = np.full((size, size, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_fallbacks_are_reported(tmp_path):
    clip = tmp_path / "short.mp4"
    _write_clip(clip, 3)
    ok = F.read_video(clip, 2, 28)
    assert ok.fallback == "none" and ok.indices.tolist() == [0, 2] and ok.frames.shape == (2, 3, 28, 28)
    short = F.read_video(clip, 4, 28)  # fewer frames than nframes -> the 2-frame retry
    assert short.fallback == "two_frames" and short.indices.tolist() == [0, 2] and len(short.errors) == 1
    assert "nframes" in short.errors[0]
    np.testing.assert_array_equal(short.frames, ok.frames)
    for bad in (tmp_path / "missing.mp4", tmp_path / "garbage.mp4"):
        if bad.name == "garbage.mp4":
            bad.write_bytes(b"not a video" * 100)
        zero = F.read_video(bad, 4, F.FRAME_SIZE)
        assert zero.fallback == "zeros" and len(zero.errors) == 2 and zero.indices.size == 0
        # the original's zero video: 10 frames whatever nframes was
        assert zero.frames.shape == (F.ZERO_VIDEO_FRAMES, 3, F.FRAME_SIZE, F.FRAME_SIZE) and not zero.frames.any()
        assert F.patch_rows(zero.frames).grid_thw.tolist() == [F.ZERO_VIDEO_FRAMES // 2, 16, 16]


def test_patch_spec_constants(spec):
    """The one home of CLIP mean / std (decode.py) agrees with the preprocessor config."""
    default = F.PatchSpec()
    np.testing.assert_array_equal(np.float32(default.mean), np.float32(spec.mean))
    np.testing.assert_array_equal(np.float32(default.std), np.float32(spec.std))


@pytest.mark.slow
def test_hf_image_processor_agrees(crab_plus_fixtures_dir, crab_plus_manifest, spec):
    """Second reference: HF's Qwen2VLImageProcessor (image settings it shares) on our image."""
    from transformers import Qwen2VLImageProcessor
    with open(crab_plus_fixtures_dir / MODEL_DIR / "preprocessor_config.json") as f:
        cfg = json.load(f)
    hf = Qwen2VLImageProcessor(**{k: cfg[k] for k in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size",
                                                        "merge_size", "image_mean", "image_std")})
    item = next(c for _, items in media_items(crab_plus_fixtures_dir, crab_plus_manifest) for c in items
                if c["type"] == "image")
    image = F.read_image(item["path"], item["resized_height"])
    out = hf(images=[image[0].transpose(1, 2, 0)], return_tensors="np")
    mine = F.patch_rows(image, spec)
    np.testing.assert_array_equal(out["image_grid_thw"][0], mine.grid_thw)
    err = float(np.abs(out["pixel_values"] - mine.rows).max())
    print(f"HF Qwen2VLImageProcessor vs ours: max abs err {err:.3e}")
    assert err <= 1e-6
