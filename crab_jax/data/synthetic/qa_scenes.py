"""Scenes of the synthetic short-answer QA tasks (:data:`~crab_jax.data.records.crab.QA_TASKS`):
one question per clip, in the AVQA format (AVQA's media, prompt, target and exact-match score).

The tasks are built to compete for the same inputs, as real audio-visual tasks do: each
clip is an AVQA-length clip (:data:`~crab_jax.data.synthetic.scenes.AVQA_FRAMES` frames,
:data:`~crab_jax.data.synthetic.scenes.AVQA_SECONDS` s of audio) of large static objects, one
per frame quadrant (:data:`QUADRANTS`), and the tone of one class:

* ``audcls`` (audio only): one object visible, the tone of *another* class heard (its object
  is not drawn); "which object's sound is heard?" -> the heard class.
* ``viscls`` (vision only): the same kind of clip; "which object is shown?" -> the visible class.
  ``audcls`` and ``viscls`` clips are drawn alike: only the question says which medium to read.
* ``count``: 1-4 objects of different classes in different quadrants, one of them sounding;
  "how many objects are visible?" -> ``one`` .. ``four``.
* ``where``: one object, sounding; "in which corner is the sounding object?" -> its quadrant
  (``top left`` ...): the frames of ``viscls``, read for position instead of identity.
* ``match``: one object of one of the two most distinct classes (:data:`MATCH_CLASSES`); half
  the clips play its own tone (``yes``), half the other one's (``no``): "does the sound belong
  to the visible object?" (the audio of ``audcls``, compared with the frames of ``viscls``: an
  XOR of the two media, which a tiny model learns in a few hundred steps with two classes,
  not with six).
* ``when``: one object that appears and starts to sound at the start of one of
  :data:`WHEN_SEGMENTS` equal parts of the clip (each 2 frames and their 2 AVQA audio windows;
  the tone starts exactly at that part's first window) and stays to the end; "in which part of
  the video does the object appear and start to sound?" -> ``first`` .. ``fifth``. (An onset,
  not a single lit part: how much of the clip the object fills then says when it came, which
  a tiny model learns quickly; a lone lit part needs absolute positions it barely learns.)

Chance level (the best media-blind answer) is 1/6, 1/6, 1/4, 1/4, 1/2 and 1/5 by design
(:mod:`crab_jax.data.synthetic.metrics` measures it on a pool).

Learnability (``configs/tiny.py``, one task, batch 16, 256 training clips, 64 held out; Dec 2026):
``audcls`` 1.00 at 200 steps, ``count`` 0.94, ``viscls`` 0.58 at 200 steps; ``where`` and
``when`` at chance at 200 steps, 0.56 and 0.98 at 400, 0.64 and 0.94 at 600; ``match`` (an XOR
of the media) at chance at 200 and 600 steps. Reading *what* is heard / seen is quick for the tiny model, reading
*where* / *when* slower, *whether they agree* slowest.
"""

from __future__ import annotations

import dataclasses

from crab_jax.data.records.crab import ORDINALS, QA_TASKS
from crab_jax.data.synthetic.scenes import (AVQA_FRAMES, AVQA_SECONDS, CLASS_NAMES, CLASSES, COUNT_WORDS,
                                            SAMPLE_RATE, AvqaClip, AvqaQuestion, Track, _clip, _draw,
                                            avqa_question_id, sample_rng)

# Quadrant -> centre (x, y) on the 56-px frame. With a radius <= 11 and a jitter <= 2 an object
# stays inside its 28-px quadrant (CLIP's 14-px patches: its own 2 x 2 patches).
QUADRANTS = {"top left": (14, 14), "top right": (42, 14), "bottom left": (14, 42), "bottom right": (42, 42)}
QA_RADIUS = (9, 11)
QA_JITTER = 2
# `match` classes: red circle (330 Hz) and cyan ring (3250 Hz), the farthest colours and tones.
MATCH_CLASSES = (0, 5)
# Background ramp (grey levels, left -> right and top -> bottom; scenes.Clip.ramp): the four
# quadrants' backgrounds differ, so what an object hides is a (faint) cue to where it is even in
# a frame's mean; on a plain background `where` needs position-selective attention alone. The
# tiny model still needs more than 200 steps for `where` (chance at 200, 0.64 at 600 steps).
# Grey: never within the colour checks' reach of a class.
QA_RAMP = (64, 32)
WHEN_SEGMENTS = 5                  # parts of a `when` clip: AVQA_FRAMES / 5 = 2 frames and 2 windows each
# The AVQA audio windows (the defaults of crab_jax.data.media.audio.segment_windows, Crab's AVQA
# rule): one per frame, around unit 6k of 60, from 0.5 units before to 1.5 after.
AVQA_UNITS, AVQA_WINDOW = 60, (0.5, 1.5)

# task -> (question, stringified MUSIC-AVQA-style type, closed answer set): the one home of
# the QA tasks' answer vocabularies.
QA_QUESTIONS = {
    "audcls": ("Which object's sound is heard?", '["Audio", "Classification"]', CLASS_NAMES),
    "viscls": ("Which object is shown?", '["Visual", "Classification"]', CLASS_NAMES),
    "count": ("How many objects are visible?", '["Visual", "Counting"]', COUNT_WORDS[1:1 + len(QUADRANTS)]),
    "where": ("In which corner is the sounding object?", '["Audio-Visual", "Location"]', tuple(QUADRANTS)),
    "match": ("Does the sound belong to the visible object?", '["Audio-Visual", "Matching"]', ("yes", "no")),
    "when": ("In which part of the video does the object appear and start to sound?",
             '["Audio-Visual", "Temporal"]', ORDINALS[:WHEN_SEGMENTS]),
}
assert tuple(QA_QUESTIONS) == QA_TASKS, "one question per QA task, in QA_TASKS order"

_NUM_SAMPLES = AVQA_SECONDS * SAMPLE_RATE
_FULL = (0, AVQA_FRAMES)
_HIDDEN = (0, 0)                   # a track that is heard but never drawn


def _placed(rng, cls: int, quadrant: str, visible: tuple[int, int]) -> Track:
    cx, cy = QUADRANTS[quadrant]
    centre = (cx + _draw(rng, (-QA_JITTER, QA_JITTER)), cy + _draw(rng, (-QA_JITTER, QA_JITTER)))
    return Track(cls, _draw(rng, QA_RADIUS), centre, centre, visible)


def _quadrant(rng) -> str:
    return tuple(QUADRANTS)[int(rng.integers(len(QUADRANTS)))]


def onset_tone_span(segment: int) -> tuple[int, int]:
    """Samples ``[a, end of clip)`` of a ``when`` tone starting with part ``segment``: ``a`` is
    the start of the part's first AVQA audio window (the window before it stays silent)."""
    first_window = segment * (AVQA_FRAMES // WHEN_SEGMENTS)      # windows are one per frame
    a = (first_window * AVQA_UNITS / AVQA_FRAMES - AVQA_WINDOW[0]) * _NUM_SAMPLES / AVQA_UNITS
    return max(0, int(round(a))), _NUM_SAMPLES


def _scene(task: str, rng) -> tuple[list[Track], int, tuple[int, int], str]:
    """``(tracks, sounding index, tone span, answer)`` of one clip of ``task``."""
    if task in ("audcls", "viscls", "match"):
        pool = list(MATCH_CLASSES) if task == "match" else len(CLASSES)
        shown, other = (int(c) for c in rng.choice(pool, 2, replace=False))
        tracks = [_placed(rng, shown, _quadrant(rng), _FULL)]
        own = task == "match" and rng.random() < 0.5
        if not own:  # the heard class is not drawn
            tracks.append(_placed(rng, other, _quadrant(rng), _HIDDEN))
        answer = {"audcls": CLASSES[other].name, "viscls": CLASSES[shown].name,
                  "match": "yes" if own else "no"}[task]
        return tracks, 0 if own else 1, (0, _NUM_SAMPLES), answer
    if task == "count":
        n = _draw(rng, (1, len(QUADRANTS)))
        classes = rng.choice(len(CLASSES), n, replace=False)
        quadrants = rng.choice(len(QUADRANTS), n, replace=False)
        tracks = [_placed(rng, int(c), tuple(QUADRANTS)[int(q)], _FULL) for c, q in zip(classes, quadrants)]
        return tracks, int(rng.integers(n)), (0, _NUM_SAMPLES), COUNT_WORDS[n]
    if task == "where":
        quadrant = _quadrant(rng)
        return [_placed(rng, int(rng.integers(len(CLASSES))), quadrant, _FULL)], 0, (0, _NUM_SAMPLES), quadrant
    if task == "when":
        segment = int(rng.integers(WHEN_SEGMENTS))
        per = AVQA_FRAMES // WHEN_SEGMENTS
        track = _placed(rng, int(rng.integers(len(CLASSES))), _quadrant(rng), (segment * per, AVQA_FRAMES))
        return [track], 0, onset_tone_span(segment), ORDINALS[segment]
    raise ValueError(f"qa_scenes: unknown QA task {task!r}; known: {QA_TASKS}")


def sample_qa_clip(task: str, seed: int, split: str, index: int) -> AvqaClip:
    """Clip ``index`` of QA task ``task`` and its one question (an AVQA clip: the same records)."""
    rng = sample_rng(seed, task, split, index)
    tracks, sounding, span, answer = _scene(task, rng)
    clip = dataclasses.replace(_clip(rng, tracks, sounding, AVQA_FRAMES, _NUM_SAMPLES, span), ramp=QA_RAMP)
    question, qtype, _ = QA_QUESTIONS[task]
    q = AvqaQuestion(task, avqa_question_id(split, index), question, qtype, answer)
    return AvqaClip(clip, f"{task}-{split}-{index:05d}", (q,))
