"""Scenes of the synthetic audio-visual dataset: what each clip shows and plays, as pure data.

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
* ``ks`` (AVUIE_2 layout only, a Kinetics-Sounds-style classification): two objects visible
  over a whole 10-unit clip, one sounding throughout; ``action`` = the sounding object's class.
* ``audcls``, ``viscls``, ``count``, ``where``, ``match``, ``when`` (AV-UIE layout only, Crab):
  one short-answer question per AVQA-style clip, tasks whose demands conflict over the same
  inputs (:mod:`crab_jax.data.synthetic.qa_scenes`).

Media scale (small enough for CPU, long enough for Crab's audio rules): frames are
``FRAME_SIZE`` px square; one nominal "second" of AVE / AVS clips is ``UNIT_SAMPLES``
samples at 16 kHz (Crab's ``nps = int(len / tot)`` then gives 18 fbank frames = one BEATs
patch row); AVQA clips are ``AVQA_SECONDS`` s so that its 2-unit windows (``tot = 60``) still
span 18 fbank frames.

Every sample is a pure function of ``(seed, task, split, index)`` (:func:`sample_rng`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from crab_jax.data.records.crab import QA_TASKS

TASKS = ("ave", "avqa", "s4", "arig")      # written in both layouts (AV-UIE and AVUIE_2)
AVUIE2_ONLY_TASKS = ("ks",)                # written in the AVUIE_2 layout only (AV-UIE has no such task)
AVUIE_ONLY_TASKS = QA_TASKS                # written in the AV-UIE layout only (Crab; no AVUIE_2 twin)
AVUIE_TASKS = TASKS + AVUIE_ONLY_TASKS     # what the AV-UIE layout (Crab) holds
AVUIE2_TASKS = TASKS + AVUIE2_ONLY_TASKS   # what the AVUIE_2 layout (Crab+) holds
ALL_TASKS = TASKS + AVUIE2_ONLY_TASKS + AVUIE_ONLY_TASKS   # (appended: older tasks keep their sample streams)
SPLITS = ("train", "test")

FRAME_SIZE = 56            # px, square frames (tiny Crab's image size)
SAMPLE_RATE = 16000        # Hz, mono
UNIT_SAMPLES = 3200        # one nominal "second" of AVE / AVS clips (0.2 s)
AVE_UNITS = 10             # AVE: 10 frames, 10 audio units (tot = 10)
AVE_MIN_EVENT_UNITS = 4    # events last >= 4 units: the all-background answer is not a good guess
AVS_UNITS = 5              # S4 / ARIG: 5 frames, 5 audio units (tot = 5)
AVQA_SECONDS = 6           # AVQA: 60 units of 1600 samples -> 2-unit windows of 3200 samples
AVQA_FRAMES = 10
KS_UNITS = 10              # KS: 10 frames, 10 audio units (Crab+'s ks crop: tot = 10)
COUNT_WORDS = ("zero", "one", "two", "three", "four")


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
    """Everything needed to render one clip (pure data; see
    :mod:`crab_jax.data.synthetic.render`).

    Attributes:
      tracks: the objects, painted in order (they never overlap).
      sounding: index into ``tracks`` of the object whose tone is heard.
      num_frames: frames of the clip (video frames or the AVS frame list).
      background: grey level of the background.
      num_samples: audio length at :data:`SAMPLE_RATE`.
      tone_span: samples ``[a, b)`` in which the sounding object's tone plays.
      amplitude_pct: tone amplitude in percent of full scale.
      noise_seed: seed of the background noise.
      ramp: ``(x, y)`` grey levels the background brightens by from the left edge to the right
        one and from the top to the bottom (0, 0: plain; the QA tasks' frames, whose object
        then hides a background patch that says where it is).
    """

    tracks: tuple[Track, ...]
    sounding: int
    num_frames: int
    background: int
    num_samples: int
    tone_span: tuple[int, int]
    amplitude_pct: int
    noise_seed: int
    ramp: tuple[int, int] = (0, 0)

    @property
    def sounding_class(self) -> ObjectClass:
        return CLASSES[self.tracks[self.sounding].cls]


def sample_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: independent of every other sample and of the counts."""
    return np.random.default_rng([int(seed), ALL_TASKS.index(task), SPLITS.index(split), int(index)])


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



@dataclasses.dataclass(frozen=True)
class KsSample:
    """One KS clip: ``action`` is the class of the object heard (the other one is silent)."""

    clip: Clip
    vid: str
    action: str


def sample_ks(seed: int, split: str, index: int) -> KsSample:
    """KS: two objects visible throughout, one sounding throughout; which class sounds."""
    rng = sample_rng(seed, "ks", split, index)
    tracks, sounding = _two_object_tracks(rng, KS_UNITS)
    n = KS_UNITS * UNIT_SAMPLES
    clip = _clip(rng, tracks, sounding, KS_UNITS, n, (0, n))
    return KsSample(clip, f"ks-{split}-{index:05d}", clip.sounding_class.name)
