"""Synthetic audio-visual dataset in the real AV-UIE / AVSBench layouts (tiny Crab's default data).

Every clip shows coloured shapes drifting over a plain grey background. Each object class
has its own colour, shape and tone frequency (:data:`CLASSES`); the sound track carries the
tone of the one *sounding* object (plus faint noise). Several objects are visible at once,
so an answer needs both modalities: the audio says which class sounds (and when), the
frames say where that object is (and when it is visible).

Tasks (the same records, prompts and targets as the real datasets, ``shared/spec/tasks.md``):

* ``ave``: an event object and a silent distractor; the tone plays over units
  ``[a0, a1)`` and the event object is visible over ``[v0, v1)`` (the whole clip in half
  the clips); the event is the overlap (>= 4 units): ``event`` = class name,
  ``[start_time, end_time)`` in units of 1/10 clip.
* ``avqa``: 1-3 objects in left / middle / right thirds, the sounding one left or right;
  questions ``Which object is making the sound?`` (6 classes), ``Where is the sounding
  object?`` (left/right), ``How many objects are in the video?`` (one/two/three),
  ``Is the {name} making the sound?`` (yes/no). Two questions share each clip.
* ``s4``: 5 frames, two objects (left, right), one sounds; the binary masks of the
  sounding object per frame (``labels_semantic/<i>.png``).
* ``arig``: the same kind of clip; the box of the sounding object in one frame, in the
  224-px frame coordinates of AVSBench (``top_left``, ``bottom_right``, inclusive).

Media scale (small enough for CPU, long enough for Crab's audio rules): frames are
``FRAME_SIZE`` px square; one nominal "second" of AVE / AVS clips is ``UNIT_SAMPLES``
samples at 16 kHz (Crab's ``nps = int(len / tot)`` then gives 18 fbank frames = one BEATs
patch row); AVQA clips are ``AVQA_SECONDS`` s so that its 2-unit windows (``tot = 60``) still
span 18 fbank frames.

Layout under ``OUT``: a data root in the folder layout of :mod:`crab_jax.data.records.readers`
(``CrabLayout`` defaults), so ``records.read_crab_task(task, mode, OUT)`` reads it; paths
inside the JSON files are relative to the task folder, as the readers expect::

    manifest.json                                   what was generated (see :func:`generate`)
    music_avqa/{valid_train,test}_samples.json      AVQA records (one per question)
    music_avqa/video_data/<video_id>.mp4            10 frames
    music_avqa/audio_data/<video_id>.wav
    music_avqa/converted_label/<question_id>.txt    AVQA targets (both splits)
    ave/{valid_train,test}_samples.json             AVE records
    ave/AVE/<vid>.mp4, ave/audio_data/<vid>.mp3     10 frames, 10 audio units
    ave/converted_label/<vid>.txt                   AVE targets (both splits)
    avs/s4_samples.json                             S4 records (both splits, field ``split``)
    avs/v1s_grounding_samples.json                  ARIG records (both splits)
    avs/v1s/<uid>/audio.wav, frames/<i>.jpg, labels_semantic/<i>.png   (i = 0..4)

Everything is a pure function of ``(seed, task, split, index)``: sample ``i`` does not
depend on how many samples are drawn, and the JSON files are byte-identical across runs.

CLI: ``python -m crab_jax.data.synthetic --out DIR --seed 0 --num-train N --num-test M``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import json
import math
import os
import pathlib
import shutil
import sys
import wave
from typing import Sequence

import numpy as np

from crab_jax.data.records.readers import CrabLayout, annotation_path

FORMAT_VERSION = 1
TASKS = ("ave", "avqa", "s4", "arig")
SPLITS = ("train", "test")
DEFAULT_NUM_TRAIN = 128
DEFAULT_NUM_TEST = 32

FRAME_SIZE = 56            # px, square frames (tiny Crab's image size)
SAMPLE_RATE = 16000        # Hz, mono
UNIT_SAMPLES = 3200        # one nominal "second" of AVE / AVS clips (0.2 s)
AVE_UNITS = 10             # AVE: 10 frames, 10 audio units (tot = 10)
AVE_MIN_EVENT_UNITS = 4    # events last >= 4 units: the all-background answer is not a good guess
AVS_UNITS = 5              # S4 / ARIG: 5 frames, 5 audio units (tot = 5)
AVQA_SECONDS = 6           # AVQA: 60 units of 1600 samples -> 2-unit windows of 3200 samples
AVQA_FRAMES = 10
BOX_SCALE = 224            # ARIG boxes are given in 224 x 224 frame coordinates
NOISE_STD = 0.002
FADE_SAMPLES = 80          # 5 ms linear fade in / out of a tone (no clicks)
COUNT_WORDS = ("zero", "one", "two", "three")


@dataclasses.dataclass(frozen=True)
class ObjectClass:
    """One object class: how it looks and how it sounds."""

    name: str
    shape: str
    colour: tuple[int, int, int]
    tone_hz: float


# Tone frequencies ~1.6x apart: well separated on the 128-bin mel scale.
CLASSES = (
    ObjectClass("red circle", "circle", (220, 50, 50), 330.0),
    ObjectClass("green square", "square", (50, 190, 70), 520.0),
    ObjectClass("blue triangle", "triangle", (60, 100, 235), 820.0),
    ObjectClass("yellow diamond", "diamond", (235, 215, 50), 1300.0),
    ObjectClass("magenta cross", "cross", (215, 60, 205), 2050.0),
    ObjectClass("cyan ring", "ring", (50, 210, 215), 3250.0),
)
CLASS_NAMES = tuple(c.name for c in CLASSES)

# Horizontal slots (centre-x ranges) and radii; objects in different slots never overlap
# on a FRAME_SIZE = 56 frame, and stay inside it.
TWO_SLOTS = {"left": (11, 18), "right": (38, 45)}
TWO_SLOT_RADIUS, TWO_SLOT_CY = (7, 9), (11, 45)
THREE_SLOTS = {"left": (8, 11), "middle": (26, 30), "right": (45, 48)}
THREE_SLOT_RADIUS, THREE_SLOT_CY = (5, 7), (9, 47)

AVQA_QUESTIONS = {
    # key: (question template, stringified MUSIC-AVQA type, closed answer set)
    "which": ("Which object is making the sound?", '["Audio-Visual", "Existential"]', CLASS_NAMES),
    "where": ("Where is the sounding object?", '["Audio-Visual", "Location"]', ("left", "right")),
    "count": ("How many objects are in the video?", '["Visual", "Counting"]', ("one", "two", "three")),
    "is_sounding": ("Is the {name} making the sound?", '["Audio-Visual", "Existential"]', ("yes", "no")),
}
AVQA_QUESTIONS_PER_CLIP = 2

# The readers' folder names (crab_jax.data.records.readers.CrabLayout defaults), so the output is a
# data root that ``records.read_crab_task(task, mode, out_dir)`` reads as is.
_CRAB_LAYOUT = CrabLayout()
_ROOTS = {"avqa": _CRAB_LAYOUT.avqa, "ave": _CRAB_LAYOUT.ave, "s4": _CRAB_LAYOUT.avs, "arig": _CRAB_LAYOUT.avs}
LAYOUT = {t: dict(root=_ROOTS[t], train=annotation_path(t, "train", _CRAB_LAYOUT),
                  test=annotation_path(t, "test", _CRAB_LAYOUT),
                  **({"labels": f"{_ROOTS[t]}/converted_label"} if t in ("avqa", "ave") else {}))
          for t in TASKS}
# Top-level entries a generation owns (removed by ``overwrite``).
OWNED_ENTRIES = ("manifest.json",) + tuple(sorted(set(_ROOTS.values())))


# ----------------------------------------------------------------------------- scenes


@dataclasses.dataclass(frozen=True)
class Track:
    """One object moving on a straight line from ``start`` (frame 0) to ``end`` (last frame).

    Attributes:
      cls: index into :data:`CLASSES`.
      radius: half the object's extent in px.
      start, end: ``(cx, cy)`` centre in px.
      visible: frames ``[v0, v1)`` in which the object is drawn.
    """

    cls: int
    radius: int
    start: tuple[int, int]
    end: tuple[int, int]
    visible: tuple[int, int]

    def centre(self, frame: int, num_frames: int) -> tuple[int, int]:
        t = frame / max(num_frames - 1, 1)
        return tuple(int(round(a + (b - a) * t)) for a, b in zip(self.start, self.end))


@dataclasses.dataclass(frozen=True)
class Clip:
    """Everything needed to render one clip (pure data; see :func:`render_frames`, :func:`render_audio`).

    Attributes:
      tracks: the objects, painted in order (they never overlap).
      sounding: index into ``tracks`` of the object whose tone is heard.
      num_frames: frames of the clip (video frames or the AVS frame list).
      background: grey level of the background.
      num_samples: audio length at :data:`SAMPLE_RATE`.
      tone_span: samples ``[a, b)`` in which the sounding object's tone plays.
      amplitude_pct: tone amplitude in percent of full scale.
      noise_seed: seed of the background noise.
    """

    tracks: tuple[Track, ...]
    sounding: int
    num_frames: int
    background: int
    num_samples: int
    tone_span: tuple[int, int]
    amplitude_pct: int
    noise_seed: int

    @property
    def sounding_class(self) -> ObjectClass:
        return CLASSES[self.tracks[self.sounding].cls]


def sample_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: independent of every other sample and of the counts."""
    return np.random.default_rng([int(seed), TASKS.index(task), SPLITS.index(split), int(index)])


def _draw(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    """Uniform integer in the closed range ``lo_hi``."""
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _track(rng, cls: int, slot: tuple[int, int], radius: tuple[int, int], cy: tuple[int, int],
           visible: tuple[int, int]) -> Track:
    r = _draw(rng, radius)
    start = (_draw(rng, slot), _draw(rng, cy))
    end = (_draw(rng, slot), _draw(rng, cy))
    return Track(cls, r, start, end, visible)


def _clip(rng, tracks, sounding, num_frames, num_samples, tone_span) -> Clip:
    return Clip(tuple(tracks), sounding, num_frames, background=_draw(rng, (24, 72)), num_samples=num_samples,
                tone_span=tone_span, amplitude_pct=_draw(rng, (20, 50)), noise_seed=int(rng.integers(2**31)))


def _two_object_tracks(rng, num_frames, event_visible=None):
    """Two objects of different classes, one per horizontal half; returns (tracks, sounding index)."""
    classes = rng.choice(len(CLASSES), 2, replace=False)
    sounding_side = int(rng.integers(2))
    tracks = []
    for k, side in enumerate(("left", "right")):
        vis = event_visible if (event_visible is not None and k == sounding_side) else (0, num_frames)
        cls = int(classes[0] if k == sounding_side else classes[1])
        tracks.append(_track(rng, cls, TWO_SLOTS[side], TWO_SLOT_RADIUS, TWO_SLOT_CY, vis))
    return tracks, sounding_side


@dataclasses.dataclass(frozen=True)
class AveSample:
    """One AVE clip and its record fields (``[start_time, end_time)`` in units of 1/10 clip)."""

    clip: Clip
    vid: str
    event: str
    start_time: int
    end_time: int


def sample_ave(seed: int, split: str, index: int) -> AveSample:
    """AVE: the event is where the tone is heard AND its object is visible (units of 1/10 clip)."""
    rng = sample_rng(seed, "ave", split, index)
    m = AVE_MIN_EVENT_UNITS
    a0 = _draw(rng, (0, AVE_UNITS - m))
    a1 = _draw(rng, (a0 + m, AVE_UNITS))
    if rng.random() < 0.5:
        v0, v1 = 0, AVE_UNITS
    else:  # appears / disappears; the overlap with the sound still lasts >= m units
        v0 = _draw(rng, (0, a1 - m))
        v1 = _draw(rng, (max(v0, a0) + m, AVE_UNITS))
    tracks, sounding = _two_object_tracks(rng, AVE_UNITS, event_visible=(v0, v1))
    clip = _clip(rng, tracks, sounding, AVE_UNITS, AVE_UNITS * UNIT_SAMPLES, (a0 * UNIT_SAMPLES, a1 * UNIT_SAMPLES))
    return AveSample(clip, f"ave-{split}-{index:05d}", clip.sounding_class.name, max(a0, v0), min(a1, v1))


@dataclasses.dataclass(frozen=True)
class AvqaQuestion:
    """One AVQA question; ``key`` names its template in :data:`AVQA_QUESTIONS`."""

    key: str
    question_id: int
    question: str
    type: str
    answer: str


@dataclasses.dataclass(frozen=True)
class AvqaClip:
    """One AVQA clip (the sounding object is ``clip.tracks[0]``) and the questions about it."""

    clip: Clip
    video_id: str
    questions: tuple[AvqaQuestion, ...]


def avqa_question_id(split: str, record_index: int) -> int:
    """Unique integer question ids: train 0.., test 1_000_000.."""
    return SPLITS.index(split) * 1_000_000 + record_index


def sample_avqa_clip(seed: int, split: str, clip_index: int) -> AvqaClip:
    """AVQA: 1-3 objects in thirds (the sounding one left or right) and two questions about them."""
    rng = sample_rng(seed, "avqa", split, clip_index)
    count = _draw(rng, (1, 3))
    classes = [int(c) for c in rng.choice(len(CLASSES), count, replace=False)]
    side = ("left", "right")[int(rng.integers(2))]
    others = [s for s in THREE_SLOTS if s != side]
    slots = [side] + [others[int(i)] for i in rng.permutation(len(others))[: count - 1]]
    tracks = [_track(rng, c, THREE_SLOTS[s], THREE_SLOT_RADIUS, THREE_SLOT_CY, (0, AVQA_FRAMES))
              for c, s in zip(classes, slots)]
    n = AVQA_SECONDS * SAMPLE_RATE
    clip = _clip(rng, tracks, 0, AVQA_FRAMES, n, (0, n))
    keys = [list(AVQA_QUESTIONS)[int(i)] for i in rng.choice(len(AVQA_QUESTIONS), AVQA_QUESTIONS_PER_CLIP,
                                                            replace=False)]
    questions = []
    for j, key in enumerate(keys):
        template, qtype, _ = AVQA_QUESTIONS[key]
        name = None
        if key == "which":
            answer = CLASSES[classes[0]].name
        elif key == "where":
            answer = side
        elif key == "count":
            answer = COUNT_WORDS[count]
        else:  # is_sounding: half "yes"; "no" names a silent visible object, else an absent one
            yes = rng.random() < 0.5
            if yes:
                cls = classes[0]
            elif count > 1:
                cls = classes[1 + int(rng.integers(count - 1))]
            else:
                absent = [c for c in range(len(CLASSES)) if c not in classes]
                cls = absent[int(rng.integers(len(absent)))]
            name, answer = CLASSES[cls].name, ("yes" if yes else "no")
        qid = avqa_question_id(split, clip_index * AVQA_QUESTIONS_PER_CLIP + j)
        questions.append(AvqaQuestion(key, qid, template.format(name=name), qtype, answer))
    return AvqaClip(clip, f"avqa-{split}-{clip_index:05d}", tuple(questions))


@dataclasses.dataclass(frozen=True)
class AvsSample:
    """One AVSBench-v1s-style clip (S4 or ARIG): 5 frames, 5 audio units, one sounding object.

    ``frame_idx`` is the frame an ARIG record grounds (S4 records cover all frames).
    """

    clip: Clip
    vid: str
    uid: str
    a_obj: str
    frame_idx: int


def sample_avs(task: str, seed: int, split: str, index: int) -> AvsSample:
    """S4 / ARIG: two objects, one sounding over the whole clip."""
    if task not in ("s4", "arig"):
        raise ValueError(f"sample_avs: task must be 's4' or 'arig', got {task!r}")
    rng = sample_rng(seed, task, split, index)
    tracks, sounding = _two_object_tracks(rng, AVS_UNITS)
    n = AVS_UNITS * UNIT_SAMPLES
    clip = _clip(rng, tracks, sounding, AVS_UNITS, n, (0, n))
    frame_idx = int(rng.integers(AVS_UNITS))
    vid = f"{task}-{split}-{index:05d}"
    return AvsSample(clip, vid, f"{vid}_0_{AVS_UNITS * 1000}", clip.sounding_class.name, frame_idx)


# ----------------------------------------------------------------------------- rendering


def shape_mask(shape: str, cx: int, cy: int, r: int, size: int = FRAME_SIZE) -> np.ndarray:
    """``[size, size]`` bool: pixels (integer centres) covered by ``shape`` of radius ``r`` at ``(cx, cy)``."""
    y, x = np.mgrid[0:size, 0:size]
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # apex up, base at cy + r, base half-width r
        return (dy >= -r) & (dy <= r) & (2 * np.abs(dx) <= dy + r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "cross":
        w = r / 3
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"shape_mask: unknown shape {shape!r}; known: {sorted({c.shape for c in CLASSES})}")


def track_masks(clip: Clip, size: int = FRAME_SIZE) -> np.ndarray:
    """``[frames, tracks, size, size]`` bool: each object's pixels per frame (empty when invisible)."""
    out = np.zeros((clip.num_frames, len(clip.tracks), size, size), bool)
    for k in range(clip.num_frames):
        for j, tr in enumerate(clip.tracks):
            if tr.visible[0] <= k < tr.visible[1]:
                cx, cy = tr.centre(k, clip.num_frames)
                out[k, j] = shape_mask(CLASSES[tr.cls].shape, cx, cy, tr.radius, size)
    return out


def render_frames(clip: Clip, size: int = FRAME_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(frames [T, size, size, 3] uint8, sounding-object masks [T, size, size] bool)``."""
    masks = track_masks(clip, size)
    frames = np.full((clip.num_frames, size, size, 3), clip.background, np.uint8)
    for j, tr in enumerate(clip.tracks):
        frames[masks[:, j]] = CLASSES[tr.cls].colour
    return frames, masks[:, clip.sounding]


def render_audio(clip: Clip) -> np.ndarray:
    """``[num_samples]`` float32 in [-1, 1]: the sounding tone over ``tone_span`` plus faint noise."""
    noise = np.random.default_rng(clip.noise_seed).normal(0.0, NOISE_STD, clip.num_samples)
    a, b = clip.tone_span
    t = np.arange(b - a) / SAMPLE_RATE
    tone = (clip.amplitude_pct / 100.0) * np.sin(2 * np.pi * clip.sounding_class.tone_hz * t)
    fade = min(FADE_SAMPLES, (b - a) // 2)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
    tone[:fade] *= ramp
    tone[len(tone) - fade:] *= ramp[::-1]
    noise[a:b] += tone
    return np.clip(noise, -1.0, 1.0).astype(np.float32)


def mask_box(mask: np.ndarray, scale: int = BOX_SCALE) -> tuple[list[int], list[int]]:
    """Inclusive box of a ``[H, W]`` mask in ``scale``-px coordinates: ``([x1, y1], [x2, y2])``.

    Pixel ``c`` of an ``H``-px frame spans ``[c * s, (c + 1) * s - 1]`` at scale ``s = scale / H``.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("mask_box: the mask is empty (no object pixels)")
    sy, sx = scale / mask.shape[0], scale / mask.shape[1]
    x1, y1 = int(cols.min() * sx), int(rows.min() * sy)
    x2, y2 = int(math.ceil((cols.max() + 1) * sx)) - 1, int(math.ceil((rows.max() + 1) * sy)) - 1
    return [x1, y1], [x2, y2]


# ----------------------------------------------------------------------------- records


def ave_label_text(event: str, start: int, end: int) -> str:
    return (f"So the audible and visible event in the video is <event> {event} </event>, "
            f"and the time range is <range> {start},{end} </range>.")


def avqa_label_text(answer: str) -> str:
    return f"So the answer is <answer> {answer} </answer>."


def ave_record(s: AveSample) -> dict:
    """Row of ``ave/*_samples.json`` (media: ``AVE/<vid>.mp4``, ``audio_data/<vid>.mp3``)."""
    return {"event": s.event, "vid": s.vid, "start_time": s.start_time, "end_time": s.end_time}


def avqa_records(c: AvqaClip) -> list[dict]:
    """Rows of ``music_avqa/*_samples.json``, one per question (paths relative to ``music_avqa``)."""
    return [{"video_id": c.video_id, "question_id": q.question_id, "type": q.type,
             "video_path": f"video_data/{c.video_id}.mp4", "audio_path": f"audio_data/{c.video_id}.wav",
             "question": q.question, "answer": q.answer} for q in c.questions]


def s4_record(s: AvsSample, split: str) -> dict:
    """Row of ``avs/s4_samples.json`` (media under ``avs/v1s/<uid>/``)."""
    return {"vid": s.vid, "uid": s.uid, "s_min": 0, "s_sec": 0, "a_obj": s.a_obj, "split": split,
            "label": s.a_obj}


def arig_record(s: AvsSample, split: str, sounding_mask: np.ndarray) -> dict:
    """Row of ``avs/v1s_grounding_samples.json`` (paths relative to ``avs``); box of frame ``frame_idx``."""
    top_left, bottom_right = mask_box(sounding_mask[s.frame_idx])
    base = f"v1s/{s.uid}"
    return {"split": split, "audio_path": f"{base}/audio.wav", "frame_path": f"{base}/frames/{s.frame_idx}.jpg",
            "mask_path": f"{base}/labels_semantic/{s.frame_idx}.png", "top_left": top_left,
            "bottom_right": bottom_right, "a_obj": s.a_obj}


# ----------------------------------------------------------------------------- writers (side effects)


VIDEO_CODEC = "mpeg4"


def write_mp4(path: pathlib.Path, frames: np.ndarray, fps: fractions.Fraction) -> None:
    """Writes ``[T, H, W, 3]`` uint8 frames as a yuv420p MPEG-4 Part 2 mp4 with exactly T frames.

    FFmpeg's own ``mpeg4`` encoder, not libx264: at 56 px libx264 reads uninitialised padding,
    so its bitstream (and decoded pixels) changed from run to run; ``mpeg4`` is repeatable.
    At this bit rate every frame is coded at the finest quantiser (near-lossless).
    """
    import av

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
    import av

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
    from PIL import Image

    # 4:4:4 chroma: at 56 px, 4:2:0 would bleed colours a pixel past the mask edges
    Image.fromarray(frame, "RGB").save(path, format="JPEG", quality=95, subsampling=0)


def write_mask_png(path: pathlib.Path, mask: np.ndarray) -> None:
    """Binary mask as an 8-bit grey png, object = 255 (AVSBench ``labels_semantic``)."""
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path, format="PNG")


def write_json(path: pathlib.Path, obj) -> None:
    """Deterministic JSON (fixed key order as built, 1-space indent, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")


def write_text(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- generation


@dataclasses.dataclass(frozen=True)
class _Job:
    task: str
    split: str
    index: int          # clip index (AVQA: clip of two questions)
    num_records: int    # records this clip yields (AVQA: 1 or 2)


def _jobs(tasks: Sequence[str], num_train: int, num_test: int) -> list[_Job]:
    jobs = []
    for task in tasks:
        for split, n in (("train", num_train), ("test", num_test)):
            if task == "avqa":
                for c in range(math.ceil(n / AVQA_QUESTIONS_PER_CLIP)):
                    jobs.append(_Job(task, split, c, min(AVQA_QUESTIONS_PER_CLIP, n - c * AVQA_QUESTIONS_PER_CLIP)))
            else:
                jobs.extend(_Job(task, split, i, 1) for i in range(n))
    return jobs


def _write_avs_clip(root: pathlib.Path, task: str, s: AvsSample) -> np.ndarray:
    """Writes ``<avs>/v1s/<uid>/``; returns the sounding object's masks ``[5, H, W]``."""
    clip_dir = root / LAYOUT[task]["root"] / "v1s" / s.uid
    (clip_dir / "frames").mkdir(parents=True, exist_ok=True)
    (clip_dir / "labels_semantic").mkdir(parents=True, exist_ok=True)
    frames, masks = render_frames(s.clip)
    for i in range(s.clip.num_frames):
        write_jpg(clip_dir / "frames" / f"{i}.jpg", frames[i])
        write_mask_png(clip_dir / "labels_semantic" / f"{i}.png", masks[i])
    write_wav(clip_dir / "audio.wav", render_audio(s.clip))
    return masks


def _run_job(root: pathlib.Path, seed: int, job: _Job) -> list[tuple[str, dict]]:
    """Renders and writes one clip; returns ``(annotation file, row)`` pairs."""
    split = job.split
    if job.task == "ave":
        s = sample_ave(seed, split, job.index)
        base = root / LAYOUT["ave"]["root"]
        frames, _ = render_frames(s.clip)
        write_mp4(base / "AVE" / f"{s.vid}.mp4", frames, fractions.Fraction(AVE_UNITS * SAMPLE_RATE, s.clip.num_samples))
        write_mp3(base / "audio_data" / f"{s.vid}.mp3", render_audio(s.clip))
        write_text(root / LAYOUT["ave"]["labels"] / f"{s.vid}.txt", ave_label_text(s.event, s.start_time, s.end_time))
        return [(LAYOUT["ave"][split], ave_record(s))]
    if job.task == "avqa":
        c = sample_avqa_clip(seed, split, job.index)
        base = root / LAYOUT["avqa"]["root"]
        frames, _ = render_frames(c.clip)
        write_mp4(base / "video_data" / f"{c.video_id}.mp4", frames, fractions.Fraction(AVQA_FRAMES, AVQA_SECONDS))
        write_wav(base / "audio_data" / f"{c.video_id}.wav", render_audio(c.clip))
        rows = avqa_records(c)[: job.num_records]
        for q in c.questions[: job.num_records]:
            write_text(root / LAYOUT["avqa"]["labels"] / f"{q.question_id}.txt", avqa_label_text(q.answer))
        return [(LAYOUT["avqa"][split], r) for r in rows]
    s = sample_avs(job.task, seed, split, job.index)
    masks = _write_avs_clip(root, job.task, s)
    if job.task == "s4":
        return [(LAYOUT["s4"][split], s4_record(s, split))]
    return [(LAYOUT["arig"][split], arig_record(s, split, masks))]


def _prepare_out(root: pathlib.Path, overwrite: bool) -> None:
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root}: output folder is not empty; pass overwrite=True (--overwrite) "
                                  "to replace a previous synthetic dataset there")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in OWNED_ENTRIES)
        if foreign:  # an interrupted generation (no manifest yet) holds only our own entries
            raise FileExistsError(f"{root}: holds {foreign[:5]}, which a synthetic dataset does not write; "
                                  "refusing to delete anything there (choose an empty folder)")
        for name in OWNED_ENTRIES:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _check_args(seed, num_train, num_test, tasks) -> tuple[str, ...]:
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks {list(tasks)}: expected a non-empty list of distinct names from {list(TASKS)}")
    if num_train < 0 or num_test < 0:
        raise ValueError(f"num_train={num_train}, num_test={num_test}: counts must be >= 0")
    if int(seed) < 0:
        raise ValueError(f"seed={seed}: must be >= 0")
    return tuple(t for t in TASKS if t in tasks)  # canonical order: the output never depends on it


def build_manifest(seed: int, num_train: int, num_test: int, tasks: Sequence[str], counts: dict) -> dict:
    """The ``manifest.json`` content: the generation's parameters, classes, layout and counts."""
    return {
        "name": "crab_jax synthetic audio-visual dataset",
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_test": int(num_test),
        "tasks": list(tasks),
        "media": {"frame_size": FRAME_SIZE, "sample_rate": SAMPLE_RATE, "unit_samples": UNIT_SAMPLES,
                  "ave_units": AVE_UNITS, "avs_units": AVS_UNITS, "avqa_seconds": AVQA_SECONDS,
                  "avqa_frames": AVQA_FRAMES, "box_scale": BOX_SCALE, "video_codec": VIDEO_CODEC},
        "classes": [{"name": c.name, "shape": c.shape, "colour": list(c.colour), "tone_hz": c.tone_hz}
                    for c in CLASSES],
        "avqa_questions": {k: {"question": q, "type": t, "answers": list(a)}
                           for k, (q, t, a) in AVQA_QUESTIONS.items()},
        "layout": {t: LAYOUT[t] for t in tasks},
        "counts": counts,
    }


def generate(out_dir: str | os.PathLike, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN,
             num_test: int = DEFAULT_NUM_TEST, tasks: Sequence[str] = TASKS, *, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Writes the dataset under ``out_dir`` and returns the manifest (also ``out_dir/manifest.json``).

    Args:
      out_dir: empty (or missing) folder; with ``overwrite`` a previous (or interrupted)
        synthetic dataset there is replaced: its own entries (:data:`OWNED_ENTRIES`) are
        removed, and a folder holding anything else is refused.
      seed: the dataset seed (sample i of a task/split depends on ``(seed, task, split, i)`` only).
      num_train, num_test: records per task and split (AVQA: questions; S4 test records
        expand to 5 frames each in the reader).
      tasks: subset of :data:`TASKS`.
    Returns:
      the manifest dict: ``seed, num_train, num_test, tasks, media, classes, avqa_questions,
      layout`` (per task: ``root``, ``train``/``test`` annotation files, ``labels``) and
      ``counts`` (per task and split: records, clips).
    """
    from tqdm import tqdm

    tasks = _check_args(seed, num_train, num_test, tasks)
    root = pathlib.Path(out_dir)
    _prepare_out(root, overwrite)
    for task in tasks:
        for sub in {"ave": ("AVE", "audio_data"), "avqa": ("video_data", "audio_data")}.get(task, ()):
            (root / LAYOUT[task]["root"] / sub).mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict]] = {}
    counts = {t: {s: {"records": 0, "clips": 0} for s in SPLITS} for t in tasks}
    jobs = _jobs(tasks, num_train, num_test)
    for job in tqdm(jobs, desc="synthetic clips", unit="clip", disable=not progress):
        rows = _run_job(root, seed, job)
        counts[job.task][job.split]["clips"] += 1
        counts[job.task][job.split]["records"] += len(rows)
        for name, row in rows:
            files.setdefault(name, []).append(row)
    for task in tasks:  # every annotation file exists, even when a split is empty
        for split in SPLITS:
            files.setdefault(LAYOUT[task][split], [])
    for name, rows in sorted(files.items()):
        write_json(root / name, rows)
    manifest = build_manifest(seed, num_train, num_test, tasks, counts)
    write_json(root / "manifest.json", manifest)  # last: its presence marks a complete dataset
    return manifest


def ensure_dataset(out_dir: str | os.PathLike, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN,
                   num_test: int = DEFAULT_NUM_TEST, tasks: Sequence[str] = TASKS, *, progress: bool = True) -> dict:
    """Returns the manifest of the dataset in ``out_dir``, generating it first unless a complete
    one with the same parameters (seed, counts, tasks, format version) is already there."""
    tasks = _check_args(seed, num_train, num_test, tasks)
    path = pathlib.Path(out_dir) / "manifest.json"
    if path.is_file():
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            m = {}
        want = dict(format_version=FORMAT_VERSION, seed=int(seed), num_train=int(num_train),
                    num_test=int(num_test), tasks=list(tasks))
        if all(m.get(k) == v for k, v in want.items()):
            return m
    return generate(out_dir, seed, num_train, num_test, tasks, overwrite=True, progress=progress)


def load_records(out_dir: str | os.PathLike, task: str, split: str) -> list[dict]:
    """The raw JSON rows of one task and split (S4 / ARIG files hold both splits: filtered by ``split``)."""
    if task not in TASKS or split not in SPLITS:
        raise ValueError(f"load_records: task {task!r} / split {split!r} not in {TASKS} / {SPLITS}")
    path = pathlib.Path(out_dir) / LAYOUT[task][split]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {task} annotation file (generate the dataset with --tasks {task})")
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [r for r in rows if r.get("split", split) == split]


# ----------------------------------------------------------------------------- CLI


def _parse_tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"--tasks {text!r}: expected a comma list from {','.join(TASKS)}")
    return tasks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.data.synthetic",
        description="Generate the synthetic audio-visual dataset (AVE, AVQA, S4, ARIG) in the real "
                    "AV-UIE / AVSBench JSON + media layout: coloured shapes with their own tones, one "
                    "object sounding per clip, so answers need both audio and frames. Deterministic "
                    "from --seed (same seed -> identical JSON and decoded media).",
        epilog="Layout (the folder layout crab_jax.data.records.readers reads): OUT/manifest.json, "
               "OUT/music_avqa/{valid_train,test}_samples.json + video_data/ audio_data/ converted_label/, "
               "OUT/ave/{valid_train,test}_samples.json + AVE/ audio_data/ converted_label/, "
               "OUT/avs/{s4_samples.json,v1s_grounding_samples.json,v1s/<uid>/}.")
    p.add_argument("--out", required=True, help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN,
                   help=f"train records per task (AVQA: questions, 2 per clip; default {DEFAULT_NUM_TRAIN})")
    p.add_argument("--num-test", type=int, default=DEFAULT_NUM_TEST,
                   help=f"test records per task (S4: clips, which the reader expands to 5 frame records "
                        f"each; default {DEFAULT_NUM_TEST})")
    p.add_argument("--tasks", type=_parse_tasks, default=TASKS,
                   help=f"comma list of tasks to generate (default {','.join(TASKS)})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous synthetic dataset in --out (only its own files are removed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        m = generate(args.out, args.seed, args.num_train, args.num_test, args.tasks, overwrite=args.overwrite,
                     progress=not args.quiet)
    except (FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{t}: {c['train']['records']} train / {c['test']['records']} test"
                        for t, c in m["counts"].items())
    print(f"wrote {args.out} (seed {m['seed']}; {summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
