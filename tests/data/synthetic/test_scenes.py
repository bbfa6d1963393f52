"""Synthetic scenes: answers follow from the media (an oracle reading only the files scores ~1
while the media-blind chance level stays far below) and match the scene description."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from crab_jax.data.media.audio import load_audio
from crab_jax.data.records.crab import read_crab_task
from crab_jax.data.records.record import Record
from crab_jax.data.synthetic import generate as gen
from crab_jax.data.synthetic import metrics as sm
from crab_jax.data.synthetic import render, scenes
from tests.data.synthetic.media_checks import (NUM_TEST, colour_mask, decode_mp4, loud_units, present_classes,
                                               read_image, tone_class)


def oracle_avqa(r: Record, root: pathlib.Path) -> str:
    frames, _ = decode_mp4(root / r.video_path)
    sounding = tone_class(load_audio(root / r.audio_path))
    present = present_classes(frames[0])
    assert sounding in present, "the sounding object must be visible"
    q = r.question
    if q == scenes.AVQA_QUESTIONS["which"][0]:
        answer = scenes.CLASSES[sounding].name
    elif q == scenes.AVQA_QUESTIONS["where"][0]:
        answer = "left" if np.nonzero(present[sounding])[1].mean() < scenes.FRAME_SIZE / 2 else "right"
    elif q == scenes.AVQA_QUESTIONS["count"][0]:
        answer = scenes.COUNT_WORDS[len(present)]
    else:
        name = re.fullmatch(r"Is the (.*) making the sound\?", q).group(1)
        answer = "yes" if name == scenes.CLASSES[sounding].name else "no"
    return f"So the answer is <answer> {answer} </answer>."


def oracle_ave(r: Record, root: pathlib.Path) -> str:
    frames, _ = decode_mp4(root / r.video_path)
    audio = load_audio(root / r.audio_path)
    loud = loud_units(audio, scenes.AVE_UNITS)
    cls = tone_class(audio[np.repeat(loud, len(audio) // scenes.AVE_UNITS)])
    visible = np.array([cls in present_classes(f) for f in frames])
    seen = [set(present_classes(f)) for f in frames]
    assert len(set.union(*seen)) == 2 and set.intersection(*seen), "a silent distractor is always on screen"
    event = np.nonzero(loud & visible)[0]
    return (f"<event> {scenes.CLASSES[cls].name} </event>, and the time range is "
            f"<range> {event.min()},{event.max() + 1} </range>.")


def oracle_sounding_pixels(r: Record, root: pathlib.Path) -> np.ndarray:
    frame = read_image(root / r.image_path)
    assert len(present_classes(frame)) == 2, "two objects on screen: the frame alone is ambiguous"
    return colour_mask(frame, scenes.CLASSES[tone_class(load_audio(root / r.audio_path))])


@pytest.mark.parametrize("task", ["avqa", "ave", "arig", "s4", "s4_category"])
def test_an_oracle_reading_the_media_beats_chance(dataset, task):
    """Answers follow from audio + frames: reading only the files scores ~1, far above chance."""
    reader_task = "s4" if task.startswith("s4") else task
    records = read_crab_task(reader_task, "test", dataset).records
    scores = []
    for r in records:
        if task == "avqa":
            scores.append(sm.score(task, oracle_avqa(r, dataset), r))
        elif task == "ave":
            scores.append(sm.score(task, oracle_ave(r, dataset), r))
        elif task == "arig":
            (x1, y1), (x2, y2) = render.mask_box(oracle_sounding_pixels(r, dataset))
            scores.append(sm.score(task, f"Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>.", r))
        elif task == "s4":
            gt = read_image(dataset / r.mask_path) > 0
            scores.append(sm.score(task, oracle_sounding_pixels(r, dataset), r, gt_mask=gt))
        else:
            name = scenes.CLASSES[tone_class(load_audio(dataset / r.audio_path))].name
            scores.append(sm.score(task, f"The object making the sound in the video is {name}.", r))
    floor = {"s4": 0.95, "arig": 0.95}.get(task, 1.0)  # JPEG: a stray edge pixel at most
    assert min(scores) >= floor - 1e-9, (task, scores)
    assert np.mean(scores) > sm.chance_level(task) + 0.3


def test_answers_match_the_scene_description(dataset):
    """The JSON answer equals what the in-memory scene says (class of the tone, box of the mask)."""
    for i in range(NUM_TEST):
        a = scenes.sample_ave(0, "test", i)
        row = gen.load_records(dataset, "ave", "test")[i]
        assert row["event"] == a.clip.sounding_class.name
        lo, hi = a.clip.tone_span
        assert lo // scenes.UNIT_SAMPLES <= row["start_time"] < row["end_time"] <= hi // scenes.UNIT_SAMPLES
        assert row["end_time"] - row["start_time"] >= scenes.AVE_MIN_EVENT_UNITS
        g = scenes.sample_avs("arig", 0, "test", i)
        row = gen.load_records(dataset, "arig", "test")[i]
        _, masks = render.render_frames(g.clip)
        ys, xs = np.nonzero(masks[g.frame_idx])
        scale = render.BOX_SCALE // scenes.FRAME_SIZE
        assert row["top_left"] == [xs.min() * scale, ys.min() * scale]
        assert row["bottom_right"] == [(xs.max() + 1) * scale - 1, (ys.max() + 1) * scale - 1]
        assert row["bottom_right"][0] < render.BOX_SCALE and row["bottom_right"][1] < render.BOX_SCALE


def test_avqa_answers_are_in_closed_sets_and_need_the_media():
    seen = {k: set() for k in scenes.AVQA_QUESTIONS}
    sounding_sides = set()
    for i in range(200):
        c = scenes.sample_avqa_clip(0, "train", i)
        for q in c.questions:
            assert q.answer in scenes.AVQA_QUESTIONS[q.key][2]
            seen[q.key].add(q.answer)
        sounding_sides.add(c.clip.tracks[0].start[0] < scenes.FRAME_SIZE / 2)
    assert all(seen[k] == set(v[2]) for k, v in scenes.AVQA_QUESTIONS.items()), seen
    assert sounding_sides == {True, False}
