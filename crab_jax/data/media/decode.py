"""Video, image and mask decoding and CLIP preprocessing, as Crab does them (host-side NumPy).

* Video (spec A.2.1): the original decodes with decord ``VideoReader(path, height=224,
  width=224)``, i.e. an ffmpeg filter graph ``scale=224:224`` with swscale's *bilinear*
  filter and conversion to rgb24 in the same step (aspect ratio not kept). Here PyAV runs
  that same filter graph, which reproduces decord's frames bit for bit on the example clips.
  Frames taken: ``np.arange(0, vlen, vlen / n).astype(int)`` with ``n = min(N, vlen)``.
* Images (spec A.2.2): PIL ``convert('RGB').resize((224, 224))`` (bicubic).
* CLIP preprocessing: HF ``CLIPImageProcessor`` of CLIP ViT-L/14 (shortest side to 224 with
  PIL bicubic, centre crop 224, ``x * (1/255)``, ``(x - mean) / std`` in float32).
* Masks (spec A.2.4): binary = OpenCV's BGR->grey (its fixed-point weights) ``> 0`` then
  OpenCV-style nearest resize; AVSS = PIL RGB, PIL nearest resize, exact palette match.

Every unusable file raises :class:`~crab_jax.data.errors.BadRecordError` with the path and
the reason (missing, 0 bytes, undecodable, truncated, too few frames).
"""

from __future__ import annotations

import contextlib

import os
from typing import Sequence

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media import audio as A

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AVSS_NUM_CLASSES = 71
MIN_VIDEO_FRAMES = 2  # a 1-frame "video" is a still or a broken file, never a clip


def check_file(path: str | os.PathLike, what: str) -> str:
    """Raises BadRecordError for a missing or 0-byte file; returns the path as str."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadRecordError(path, f"{what} file not found")
    if os.path.getsize(path) == 0:
        raise BadRecordError(path, f"{what} file is empty (0 bytes)")
    return path


# ---------------------------------------------------------------------------- video


def uniform_indices(num_frames_in_file: int, num_frames: int) -> np.ndarray:
    """Crab's uniform sampling ``np.arange(0, vlen, vlen / n).astype(int)``, ``n = min(N, vlen)``.

    [quirk] float ``arange`` can give ``n + 1`` indices for some ``vlen``; kept for parity.
    Returns ``[n]`` int64 frame indices.
    """
    n = min(num_frames, num_frames_in_file)
    return np.arange(0, num_frames_in_file, num_frames_in_file / n).astype(int).astype(np.int64)


def _scale_graph(stream, width: int, height: int):
    """ffmpeg graph ``buffer -> scale=W:H:flags=bilinear -> format=rgb24 -> sink`` (decord's)."""
    graph = av.filter.Graph()
    src = graph.add_buffer(template=stream)
    scale = graph.add("scale", f"{width}:{height}:flags=bilinear")
    fmt = graph.add("format", "pix_fmts=rgb24")
    sink = graph.add("buffersink")
    src.link_to(scale)
    scale.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    return graph


def count_frames(container, stream) -> int:
    """Frames in the file as decord's index sees them: the container's count when it has
    one, else the number of video packets (demuxing only, no decoding)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    count = sum(1 for p in container.demux(stream) if p.size)
    container.seek(0)
    return count


def decode_video(path: str | os.PathLike, num_frames: int, size: int = CLIP_SIZE,
                 min_frames: int = MIN_VIDEO_FRAMES) -> tuple[np.ndarray, np.ndarray, int]:
    """Decodes ``num_frames`` uniformly sampled frames, resized to ``size x size``.

    Returns:
      ``(frames [T, size, size, 3] uint8 RGB, indices [T] int64, frames_in_file)``.
    Raises:
      BadRecordError: missing / empty / undecodable file, no video stream, fewer than
      ``min_frames`` frames, or a file that ends before the last wanted frame (truncated).
    """
    path = check_file(path, "video")
    with open_video(path) as (container, stream):
        try:
            vlen = count_frames(container, stream)
        except Exception as e:
            raise BadRecordError(path, f"cannot read video packets ({type(e).__name__}: {e})") from e
        if vlen < min_frames:
            raise BadRecordError(path, f"video has {vlen} frame(s); at least {min_frames} needed")
        indices = uniform_indices(vlen, num_frames)
        wanted = {int(i): k for k, i in enumerate(indices)}
        frames: list[np.ndarray | None] = [None] * len(indices)
        graph = _scale_graph(stream, size, size)
        for i, frame in frames_through(container, stream, path, int(indices[-1])):
            if i in wanted:
                graph.push(frame)
                frames[wanted[i]] = graph.pull().to_ndarray()
        return np.stack(frames).astype(np.uint8), indices, vlen


@contextlib.contextmanager
def open_video(path: str):
    """``(container, first video stream)`` of ``path``, closed on exit; BadRecordError naming the
    file when it cannot be opened or has no video stream."""
    try:
        container = av.open(path)
    except Exception as e:  # av.error.* (InvalidDataError, ...) and OSError
        raise BadRecordError(path, f"cannot open video ({type(e).__name__}: {e})") from e
    try:
        if not container.streams.video:
            raise BadRecordError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def frames_through(container, stream, path: str, last: int):
    """Yields ``(index, av.VideoFrame)`` for frames 0..``last`` in decode order; BadRecordError when
    decoding fails or the stream ends before frame ``last`` (a truncated file)."""
    decoded = 0
    try:
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            yield i, frame
            if i >= last:
                return
    except BadRecordError:
        raise
    except Exception as e:
        raise BadRecordError(path, f"video decoding failed after {decoded} frame(s) ({type(e).__name__}: {e})") from e
    raise BadRecordError(path, f"truncated video: {decoded} frame(s) decoded, frame {last} is needed")


# ---------------------------------------------------------------------------- images


def _open_image(path: str | os.PathLike, what: str):
    path = check_file(path, what)
    try:
        img = Image.open(path)
        img.load()  # decode now, so a truncated file fails here and names the file
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadRecordError(path, f"cannot decode {what} ({type(e).__name__}: {e})") from e
    return img


def load_image(path: str | os.PathLike, size: int = CLIP_SIZE) -> np.ndarray:
    """PIL ``open().convert('RGB').resize((size, size))`` (bicubic): ``[size, size, 3]`` uint8."""
    img = _open_image(path, "image").convert("RGB")
    return np.asarray(img.resize((size, size), Image.BICUBIC), np.uint8)


def load_frames(paths: Sequence[str | os.PathLike], size: int = CLIP_SIZE) -> np.ndarray:
    """A video given as JPEG frames (S4/MS3/AVSS/Ref-AVS): ``[T, size, size, 3]`` uint8."""
    if not paths:
        raise ValueError("load_frames needs at least one frame path")
    return np.stack([load_image(p, size) for p in paths])


def clip_preprocess(images: np.ndarray, size: int = CLIP_SIZE, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """HF ``CLIPImageProcessor`` (CLIP ViT-L/14 settings) on RGB uint8 images.

    Args:
      images: ``[T, H, W, 3]`` or ``[H, W, 3]`` uint8.
    Returns:
      ``[T, 3, size, size]`` float32 (``[3, size, size]`` for one image).
    """
    single = images.ndim == 3
    batch = images[None] if single else images
    out = np.stack([_clip_one(im, size, mean, std) for im in batch])
    return out[0] if single else out


def _clip_one(image: np.ndarray, size: int, mean, std) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        # shortest side -> size (the long side truncated like HF), PIL bicubic, centre crop.
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(size * long / short)
        new_h, new_w = (size, new_long) if h <= w else (new_long, size)
        if (new_h, new_w) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        image = image[top: top + size, left: left + size]
    # HF: rescale in float64 then cast to float32, normalise in float32.
    x = (image * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def video_pixels(path: str | os.PathLike, num_frames: int, size: int = CLIP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(pixel_values [T, 3, size, size] float32, frame indices [T])`` of a video file."""
    frames, indices, _ = decode_video(path, num_frames, size)
    return clip_preprocess(frames, size), indices


def image_pixels(path: str | os.PathLike, size: int = CLIP_SIZE) -> np.ndarray:
    """``[1, 3, size, size]`` float32 CLIP pixels of one still image."""
    return clip_preprocess(load_image(path, size)[None], size)


# ----------------------------------------------------------------------------- masks


def _as_rgb_uint8(img) -> np.ndarray:
    """What ``cv2.imread(path)`` (IMREAD_COLOR) sees, in RGB order: 16-bit scaled to 8 bits,
    grey replicated, palette expanded, alpha dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, np.uint32) >> 8
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), np.uint8)


def opencv_gray(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's ``COLOR_BGR2GRAY`` on 8-bit input: fixed point, weights 4899/9617/1868 >> 14."""
    rgb = rgb.astype(np.int32)
    g = (rgb[..., 0] * 4899 + rgb[..., 1] * 9617 + rgb[..., 2] * 1868 + (1 << 13)) >> 14
    return g.astype(np.uint8)


def opencv_nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each output pixel in ``cv2.resize(..., INTER_NEAREST)``:
    ``min(floor(x * (1 / (dst / src))), src - 1)`` in double precision."""
    inv = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst) * inv).astype(np.int64), src - 1)


def load_binary_mask(path: str | os.PathLike, size: int = CLIP_SIZE) -> np.ndarray:
    """Binary GT mask (S4, MS3, Ref-AVS, LVIS): ``[1, size, size]`` float32 in {0, 1}."""
    mask = opencv_gray(_as_rgb_uint8(_open_image(path, "mask"))) > 0
    rows = opencv_nearest_indices(mask.shape[0], size)
    cols = opencv_nearest_indices(mask.shape[1], size)
    return mask[rows][:, cols].astype(np.float32)[None]


def avss_palette(num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """AVSBench-semantic colours ``[num_classes, 3]`` uint8 (the PASCAL VOC colour map):
    the bits of class j, 3 at a time from the lowest, set bit 7-g of R, G, B."""
    pal = np.zeros((num_classes, 3), np.int64)
    for j in range(num_classes):
        c, g = j, 0
        while c:
            for ch in range(3):
                pal[j, ch] |= ((c >> ch) & 1) << (7 - g)
            c >>= 3
            g += 1
    return pal.astype(np.uint8)


def load_avss_mask(path: str | os.PathLike, size: int = CLIP_SIZE,
                   num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """AVSS colour mask -> class ids: PIL RGB, NEAREST resize, exact palette match (unmatched
    colours -> 0). Returns ``[1, size, size]`` int64 in ``[0, num_classes)``."""
    rgb = np.asarray(_open_image(path, "mask").convert("RGB").resize((size, size), Image.NEAREST), np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal = avss_palette(num_classes).astype(np.int64)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup = {int(c): j for j, c in reversed(list(enumerate(pal_code)))}  # first match wins
    uniq, inverse = np.unique(code, return_inverse=True)
    ids = np.array([lookup.get(int(c), 0) for c in uniq], np.int64)[inverse.reshape(code.shape)]
    return ids[None]


def load_mask(path: str | os.PathLike, task: str, size: int = CLIP_SIZE) -> np.ndarray:
    """The GT mask of a segmentation task: AVSS class ids, else the binary mask."""
    return load_avss_mask(path, size) if task == "avss" else load_binary_mask(path, size)


# ----------------------------------------------------------------------------- audio


def decode_audio(path: str | os.PathLike) -> np.ndarray:
    """:func:`crab_jax.data.media.audio.load_audio` (its errors are already BadRecordError)."""
    return A.load_audio(check_file(path, "audio"))


# AudioSpec kinds :func:`audio_segments` cuts (Crab's); ``"crab_plus"`` crops are the family's own.
SEGMENT_KINDS = ("clip", "avqa", "frame", "seconds")


def audio_segments(spec, audio: np.ndarray):
    """Cuts a decoded ``[samples]`` waveform by a record's :class:`~crab_jax.data.records.record.AudioSpec`
    (Crab family) into :class:`~crab_jax.data.media.audio.AudioSegments`.

    ``"seconds"`` (pretraining): pad to >= 1 s, pad the end to whole seconds, 16000-sample
    windows; the original pads with float64 zeros, so a padded clip is float64 throughout.
    ``pad_to_second`` (test-time AVSS) likewise promotes the whole clip when it pads.
    """
    audio = np.asarray(audio, np.float32)
    if spec.kind == "clip":
        return A.segment_clip(audio, spec.tot)
    if spec.kind == "avqa":
        return A.segment_windows(audio, spec.tot)
    promoted = False
    if spec.kind in ("frame", "seconds") and (spec.kind == "seconds" or spec.pad_to_second) \
            and audio.shape[0] < A.SAMPLE_RATE:
        audio, promoted = np.concatenate([audio, np.zeros(A.SAMPLE_RATE - audio.shape[0], np.float32)]), True
    if spec.kind == "frame":
        seg = A.segment_at_frame(audio, int(spec.idx), spec.tot, pad_short=spec.pad_short)
        return A.AudioSegments(seg.waveforms, seg.computed_in_float64 | promoted)
    if spec.kind == "seconds":
        rest = (-audio.shape[0]) % A.SAMPLE_RATE
        if rest:
            audio, promoted = np.concatenate([audio, np.zeros(rest, np.float32)]), True
        waves = audio.reshape(-1, A.SAMPLE_RATE)
        return A.AudioSegments(waves, np.full(waves.shape[0], promoted))
    raise ValueError(f"no Crab audio rule for AudioSpec kind {spec.kind!r}")
