"""Video / image / mask decoding and CLIP preprocessing: files made here, and the original's
numbers on the example media (parity)."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessor

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media import decode as M
from crab_jax.data.records.record import AudioSpec


def _write_video(path, num_frames, width=64, height=48, fps=10, faststart=False):
    """An mpeg4 clip whose frame k is a flat colour with k in the red channel; ``faststart``
    puts the frame index before the data, so a cut file still lists every frame."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 20_000_000  # near-lossless: frame identity stays readable
        for k in range(num_frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = 10 * k
            img[..., 1] = 128
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_uniform_indices():
    assert M.uniform_indices(250, 10).tolist() == list(range(0, 250, 25))
    assert M.uniform_indices(150, 10).tolist() == list(range(0, 150, 15))
    assert M.uniform_indices(7, 10).tolist() == list(range(7))  # fewer frames than asked
    assert M.uniform_indices(30, 8).tolist() == [0, 3, 7, 11, 15, 18, 22, 26]


def test_decode_video_samples_and_resizes(tmp_path):
    path = _write_video(tmp_path / "clip.mp4", 20)
    frames, idx, vlen = M.decode_video(path, 10, size=32)
    assert vlen == 20 and idx.tolist() == list(range(0, 20, 2))
    assert frames.shape == (10, 32, 32, 3) and frames.dtype == np.uint8
    # the red channel follows the frame number (lossy codec: a few levels of slack)
    assert np.abs(frames[:, 16, 16, 0].astype(int) - 10 * idx).max() <= 4
    pixels, idx2 = M.video_pixels(path, 4)
    assert pixels.shape == (4, 3, 224, 224) and pixels.dtype == np.float32 and idx2.tolist() == [0, 5, 10, 15]


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "no_index", "truncated", "one_frame"])
def test_bad_videos_name_file_and_reason(tmp_path, case):
    path = tmp_path / f"{case}.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"this is not a video" * 100)
    elif case in ("no_index", "truncated"):  # cut before the index (at the end) / the data
        data = _write_video(tmp_path / "full.mp4", 20, faststart=case == "truncated").read_bytes()
        path.write_bytes(data[: int(len(data) * 0.8)])
    elif case == "one_frame":
        _write_video(path, 1)
    with pytest.raises(BadRecordError) as e:
        M.decode_video(path, 10)
    assert e.value.path == str(path)
    expect = {"missing": "not found", "empty": "0 bytes", "garbage": "cannot open", "no_index": "cannot open",
              "truncated": "truncated video", "one_frame": "1 frame"}
    assert expect[case] in e.value.reason
    print(f"{case}: {e.value}")


def test_clip_preprocess_matches_hf_processor():
    """Non-square input exercises the shortest-side resize and the centre crop."""
    hf = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                            do_convert_rgb=True, image_mean=list(M.CLIP_MEAN), image_std=list(M.CLIP_STD))
    rng = np.random.default_rng(0)
    for shape in [(300, 260, 3), (224, 224, 3), (180, 400, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = hf.preprocess([Image.fromarray(img)], return_tensors="np")["pixel_values"]
        ours = M.clip_preprocess(img[None])
        assert ours.shape == ref.shape == (1, 3, 224, 224)
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_load_image_bad_files(tmp_path):
    good = tmp_path / "a.jpg"
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(good, quality=95)
    assert M.load_image(good).shape == (224, 224, 3)
    assert M.image_pixels(good).shape == (1, 3, 224, 224)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])
    for path, reason in [(cut, "cannot decode"), (tmp_path / "none.jpg", "not found")]:
        with pytest.raises(BadRecordError, match=reason) as e:
            M.load_image(path)
        assert e.value.path == str(path)


def test_binary_mask_opencv_grey_and_nearest(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = (0, 0, 4)   # OpenCV grey rounds to 0 -> background
    rgb[0, 1] = (0, 0, 5)   # grey 1 -> foreground
    rgb[3, 5] = (255, 255, 255)
    path = tmp_path / "m.png"
    Image.fromarray(rgb).save(path)
    mask = M.load_binary_mask(path, size=12)
    assert mask.shape == (1, 12, 12) and mask.dtype == np.float32
    # nearest: output pixel x reads source floor(x * 6 / 12), y reads floor(y * 4 / 12)
    assert mask[0, 0, 0] == 0 and mask[0, 0, 2] == 1 and mask[0, 11, 11] == 1 and mask.sum() == 3 * 2 + 3 * 2
    assert M.opencv_nearest_indices(720, 224).tolist()[:4] == [0, 3, 6, 9]


def test_avss_palette_and_mask(tmp_path):
    pal = M.avss_palette()
    assert pal.shape == (71, 3)
    for j, colour in {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                      8: (64, 0, 0), 70: (32, 128, 128)}.items():
        assert tuple(pal[j]) == colour
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0], rgb[0, 1], rgb[1, 0] = pal[70], pal[8], (1, 2, 3)  # last one matches no class
    path = tmp_path / "c.png"
    Image.fromarray(rgb).save(path)
    ids = M.load_avss_mask(path, size=4)
    assert ids.dtype == np.int64 and ids.shape == (1, 4, 4)
    assert ids[0, :2, :2].ravel().tolist() == [70] * 4 and ids[0, 0, 3] == 8 and ids[0, 3, 0] == 0
    assert M.load_mask(path, "avss", 4).tolist() == ids.tolist()


def test_decode_audio_errors(tmp_path):
    empty = tmp_path / "a.wav"
    empty.write_bytes(b"")
    with pytest.raises(BadRecordError, match="0 bytes"):
        M.decode_audio(empty)
    bad = tmp_path / "b.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(BadRecordError, match="cannot decode") as e:
        M.decode_audio(bad)
    assert e.value.path == str(bad)


# ------------------------------------------------------------------------- parity


def _crab_full(fixtures_dir, manifest):
    cfg = manifest["fixtures"]["crab_full"]["config"]
    arrays = np.load(fixtures_dir / "crab_full" / "crab_full.npz")
    return cfg, arrays, fixtures_dir.parent.parent / "media"


@pytest.mark.parity
def test_video_frames_match_decord(fixtures_dir, manifest):
    """Frame indices equal the original's; the decoded 224x224 frames are decord's frames
    bit for bit (same ffmpeg graph: bilinear swscale + rgb24), so the bound is 0."""
    cfg, arrays, media_root = _crab_full(fixtures_dir, manifest)
    n_checked = 0
    for i, (med, info) in enumerate(zip(cfg["media"], cfg["video_info"])):
        if "video_path" not in med:
            continue
        ref_pixels = arrays[f"s{i}_video_pixel_values"]
        ref_pixels = ref_pixels.reshape(-1, *ref_pixels.shape[-3:])  # [frames, 3, H, W]
        frames, idx, vlen = M.decode_video(media_root / med["video_path"], ref_pixels.shape[0])
        assert vlen == info["num_frames_in_file"]
        assert idx.tolist() == info["indices"]
        diff = int(np.abs(frames[0].astype(int) - arrays[f"s{i}_frame0_uint8"].astype(int)).max())
        print(f"s{i} {med['video_path']}: frame 0 max abs pixel difference vs decord = {diff}")
        assert diff == 0
        # normalisation of the fixture's own frame 0 reproduces its pixel values
        np.testing.assert_allclose(M.clip_preprocess(arrays[f"s{i}_frame0_uint8"]), ref_pixels[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(M.clip_preprocess(frames), ref_pixels, atol=1e-6, rtol=0)
        n_checked += 1
    assert n_checked > 0 or all("video_path" not in m for m in cfg["media"])


@pytest.mark.parity
def test_image_and_mask_match_original(fixtures_dir, manifest):
    cfg, arrays, media_root = _crab_full(fixtures_dir, manifest)
    n_images = n_masks = 0
    for i, med in enumerate(cfg["media"]):
        if "image_path" in med:
            n_images += 1
            image = M.load_image(media_root / med["image_path"])
            diff = int(np.abs(image.astype(int) - arrays[f"s{i}_frame0_uint8"].astype(int)).max())
            print(f"s{i} {med['image_path']}: max abs pixel difference = {diff}")
            assert diff <= 1  # PIL bicubic; 1/255 allowed for a different Pillow build
            ref = arrays[f"s{i}_image_pixel_values"]
            ref = ref.reshape(-1, *ref.shape[-3:])
            np.testing.assert_allclose(M.image_pixels(media_root / med["image_path"]), ref,
                                       atol=1.001 / 255 / min(M.CLIP_STD), rtol=0)
        if "mask_path" in med and f"s{i}_gt_mask" in arrays:
            task = cfg["batch_tasks"][i]
            ref = arrays[f"s{i}_gt_mask"]
            mask = M.load_mask(media_root / med["mask_path"], task)
            np.testing.assert_array_equal(mask.astype(ref.dtype), ref.reshape(mask.shape))
            n_masks += 1
    # every image / mask the manifest names was compared (none silently skipped)
    assert n_images == sum("image_path" in m for m in cfg["media"])
    assert n_masks == sum("mask_path" in m for m in cfg["media"]), "a mask_path without its s{i}_gt_mask array"


def test_audio_segments_follow_record_spec():
    wave = np.arange(25000, dtype=np.float32)
    clip = M.audio_segments(AudioSpec("clip", 5), wave)
    assert clip.waveforms.shape == (5, 5000) and not clip.computed_in_float64.any()
    one = M.audio_segments(AudioSpec("frame", 5, 2), wave)
    np.testing.assert_array_equal(one.waveforms[0], wave[10000:15000])
    secs = M.audio_segments(AudioSpec("seconds"), wave)
    assert secs.waveforms.shape == (2, 16000) and secs.computed_in_float64.all()
    assert (secs.waveforms[1, 9000:] == 0).all()
    short = M.audio_segments(AudioSpec("frame", 10, 3, pad_to_second=True), np.ones(8000, np.float32))
    assert short.waveforms.shape == (1, 1600) and short.computed_in_float64.all()
    with pytest.raises(ValueError, match="crab_plus"):
        M.audio_segments(AudioSpec("crab_plus"), wave)
