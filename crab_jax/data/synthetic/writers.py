"""Media and annotation file writers of the synthetic dataset (the only side effects)."""

from __future__ import annotations

import fractions
import json
import os
import pathlib
import shutil
import wave

import av
import numpy as np
from PIL import Image

from crab_jax.data.synthetic.scenes import SAMPLE_RATE

VIDEO_CODEC = "mpeg4"


def write_mp4(path: pathlib.Path, frames: np.ndarray, fps: fractions.Fraction) -> None:
    """Writes ``[T, H, W, 3]`` uint8 frames as a yuv420p MPEG-4 Part 2 mp4 with exactly T frames.

    FFmpeg's own ``mpeg4`` encoder, not libx264: at 56 px libx264 reads uninitialised padding,
    so its bitstream (and decoded pixels) changed from run to run; ``mpeg4`` is repeatable.
    At this bit rate every frame is coded at the finest quantiser (near-lossless).
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def write_wav(path: pathlib.Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono wav."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(_int16(audio).tobytes())


def write_mp3(path: pathlib.Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Mono mp3 (LAME, 64 kb/s; the LAME header makes decoders drop the encoder delay)."""
    if "libmp3lame" not in av.codecs_available:
        raise RuntimeError(f"{path}: this PyAV has no libmp3lame encoder; AVE audio must be .mp3 "
                           "(<AVE_ROOT>/audio_data/<vid>.mp3)")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate)
        stream.layout = "mono"
        stream.codec_context.bit_rate = 64_000
        frame = av.AudioFrame.from_ndarray(_int16(audio)[None], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_jpg(path: pathlib.Path, frame: np.ndarray) -> None:
    """RGB ``[H, W, 3]`` uint8 frame as a JPEG."""
    # 4:4:4 chroma: at 56 px, 4:2:0 would bleed colours a pixel past the mask edges
    Image.fromarray(frame, "RGB").save(path, format="JPEG", quality=95, subsampling=0)


def write_mask_png(path: pathlib.Path, mask: np.ndarray) -> None:
    """Binary mask as an 8-bit grey png, object = 255 (AVSBench ``labels_semantic``)."""
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path, format="PNG")


def write_json(path: pathlib.Path, obj) -> None:
    """Deterministic JSON (fixed key order as built, 1-space indent, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")


def write_text(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")



def link_file(src: pathlib.Path, dst: pathlib.Path) -> None:
    """``dst`` as a hard link of ``src`` (the same encoded bytes under a second layout's path);
    a copy where the file system has no hard links."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
