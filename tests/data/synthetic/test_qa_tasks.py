"""The synthetic QA tasks (audcls, viscls, count, where, match, when): written in the AVQA
format under ``synthetic_qa/<task>/``, read back by Crab's reader, answers that follow from
the decoded media, and prompts / scorers / chance levels for each task."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from crab_jax.data.media.audio import load_audio, segment_windows
from crab_jax.data.records.crab import ORDINALS, QA_TASKS, read_crab_task
from crab_jax.data.records.crab_plus import read_crab_plus_records
from crab_jax.data.records.record import Record, load_answer
from crab_jax.data.records.select import read_records
from crab_jax.data.synthetic import metrics as sm
from crab_jax.data.synthetic import qa_scenes, render, scenes
from crab_jax.data.synthetic.records import avqa_label_text
from crab_jax.data.synthetic.setup import heldout_records
from crab_jax.families.crab import evaluation, media_slots, prompts, references, scoring
from tests.data.synthetic.media_checks import decode_mp4, generate_small, present_classes, tone_class

NUM_TRAIN, NUM_TEST = 2, 6
# Chance by design (uniform answers); the pool's best constant answer is a little luckier.
DESIGN_CHANCE = {"audcls": 1 / 6, "viscls": 1 / 6, "count": 1 / 4, "where": 1 / 4, "match": 1 / 2, "when": 1 / 5}


@pytest.fixture(scope="module")
def qa_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("synthetic_qa")
    generate_small(root, 0, num_train=NUM_TRAIN, num_test=NUM_TEST, tasks=QA_TASKS)
    return root


def _quadrant_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    half = scenes.FRAME_SIZE / 2
    return f"{'top' if ys.mean() < half else 'bottom'} {'left' if xs.mean() < half else 'right'}"


def _loud_windows(audio: np.ndarray) -> list[int]:
    """The AVQA audio windows (what the model hears) that hold the tone."""
    windows = segment_windows(audio, 60).waveforms
    return [k for k, w in enumerate(windows) if np.sqrt(np.mean(np.asarray(w, np.float64) ** 2)) > 0.05]


def oracle(r: Record, root: pathlib.Path) -> str:
    """The answer read off the decoded video and audio files alone."""
    frames, _ = decode_mp4(root / r.video_path)
    audio = load_audio(root / r.audio_path)
    shown = [present_classes(f) for f in frames]
    if r.task == "when":
        on = [k for k, p in enumerate(shown) if p]
        assert on == _loud_windows(audio) == list(range(on[0], scenes.AVQA_FRAMES)), "seen from when it is heard"
        per = scenes.AVQA_FRAMES // qa_scenes.WHEN_SEGMENTS
        assert on[0] % per == 0
        return ORDINALS[on[0] // per]
    assert all(set(p) == set(shown[0]) for p in shown), "static objects, visible throughout"
    visible, heard = shown[0], tone_class(audio)
    if r.task == "audcls":
        assert heard not in visible, "audcls: the heard object is never the one shown"
        return scenes.CLASSES[heard].name
    if r.task == "viscls":
        assert len(visible) == 1 and heard not in visible
        return scenes.CLASSES[next(iter(visible))].name
    if r.task == "count":
        assert heard in visible
        return scenes.COUNT_WORDS[len(visible)]
    if r.task == "where":
        assert list(visible) == [heard]
        return _quadrant_of(visible[heard])
    assert r.task == "match" and len(visible) == 1
    return "yes" if heard in visible else "no"


@pytest.mark.parametrize("task", QA_TASKS)
def test_records_are_written_and_read_back_in_the_avqa_format(qa_root, task):
    manifest = json.loads((qa_root / "manifest.json").read_text())
    assert manifest["layout"][task]["root"] == f"synthetic_qa/{task}" and task not in manifest["avuie2_layout"]
    question, qtype, answers = qa_scenes.QA_QUESTIONS[task]
    assert manifest["qa_questions"][task] == {"question": question, "type": qtype, "answers": list(answers)}
    train = read_crab_task(task, "train", qa_root).records
    test = read_crab_task(task, "test", qa_root).records
    assert (len(train), len(test)) == (NUM_TRAIN, NUM_TEST)
    for r in train + test:
        assert r.task == task and r.question == question and r.audio.kind == "avqa"
        assert r.video_path.startswith(f"synthetic_qa/{task}/video_data/")
    for r in train:
        assert load_answer(r, qa_root) in {avqa_label_text(a) for a in answers}
    assert {r.gt for r in test} <= set(answers)
    held = heldout_records(qa_root, (task,), read_records)
    assert [h.answer for h in held] == [avqa_label_text(r.gt) for r in test]


@pytest.mark.parametrize("task", QA_TASKS)
def test_answers_follow_from_the_decoded_media(qa_root, task):
    """An oracle reading only the files scores 1 (each answer matches the rendered scene:
    the object's quadrant, the number of objects, the part of the clip it sounds in ...)."""
    records = read_crab_task(task, "test", qa_root).records
    scores = [sm.score(task, avqa_label_text(oracle(r, qa_root)), r) for r in records]
    assert scores == [1.0] * len(records), scores


@pytest.mark.parametrize("task", QA_TASKS)
def test_answers_cover_their_closed_set_and_chance_is_as_designed(task):
    answers = {scenes_answer for i in range(120)
               for scenes_answer in [qa_scenes.sample_qa_clip(task, 0, "train", i).questions[0].answer]}
    assert answers == set(qa_scenes.QA_QUESTIONS[task][2])
    chance = sm.chance_level(task)
    assert DESIGN_CHANCE[task] - 1e-9 <= chance < DESIGN_CHANCE[task] + 0.06, chance
    assert sm.summary(task, [1.0, 0.0])["chance"] == chance and sm.METRIC_NAMES[task] == "accuracy"


def test_qa_backgrounds_ramp_by_quadrant_and_the_older_tasks_stay_plain():
    qa = render.background_image(qa_scenes.sample_qa_clip("where", 0, "test", 0).clip).astype(int)
    h = scenes.FRAME_SIZE // 2
    means = {round(float(qa[y:y + h, x:x + h].mean())) for y in (0, h) for x in (0, h)}
    assert len(means) == 4, means
    for clip in (scenes.sample_avqa_clip(0, "test", 0).clip, scenes.sample_ave(0, "test", 0).clip):
        frames, _ = render.render_frames(clip)
        assert np.all(frames[:, 0, 0] == clip.background) and np.all(frames[:, -1, -1] == clip.background)


def test_when_tone_starts_exactly_with_its_parts_first_audio_window():
    for segment in range(qa_scenes.WHEN_SEGMENTS):
        a, b = qa_scenes.onset_tone_span(segment)
        audio = np.zeros(scenes.AVQA_SECONDS * scenes.SAMPLE_RATE, np.float32)
        audio[a:b] = 1.0
        windows = np.asarray(segment_windows(audio, 60).waveforms)
        heard = [k for k, w in enumerate(windows) if np.any(w)]
        assert heard == list(range(2 * segment, scenes.AVQA_FRAMES))
        assert np.all(windows[2 * segment + 1:-1] == 1.0)  # (the end windows are padded: Crab's rule)


@pytest.mark.parametrize("task", QA_TASKS)
def test_prompts_scoring_and_media_slots_exist(qa_root, task):
    r = read_crab_task(task, "test", qa_root).records[0]
    instruction, target = prompts.build_crab_text(r, avqa_label_text(r.gt))
    assert instruction.endswith(f"Please answer this question: {r.question} [/INST]")
    assert target == avqa_label_text(r.gt) + "</s>"
    wrong = next(a for a in qa_scenes.QA_QUESTIONS[task][2] if a != r.gt)
    ref = avqa_label_text(r.gt)
    assert evaluation.score_sample(task, text=ref, reference_text=ref, generated=np.zeros(0), reference=np.zeros(0),
                                   eos_id=2)[task] == 1.0
    assert evaluation.score_sample(task, text=avqa_label_text(wrong), reference_text=ref, generated=np.zeros(0),
                                   reference=np.zeros(0), eos_id=2)[task] == 0.0
    assert evaluation.HEADLINE[task] == (task,)
    assert media_slots.SLOT_NEEDS[(task, "train")] == media_slots.SLOT_NEEDS[("avqa", "train")]
    line = scoring.prediction_metadata(r)
    assert line["reference"] == references.record_reference(r) == {"answer": r.gt, "type": r.fields["type"]}
    scorer = scoring.TASK_SCORERS[task](None)
    assert scorer.name == task


def test_qa_tasks_are_crab_only():
    assert not set(QA_TASKS) & set(scenes.AVUIE2_TASKS)
    assert scenes.ALL_TASKS[: len(scenes.AVUIE2_TASKS)] == scenes.AVUIE2_TASKS  # older sample streams unchanged
    with pytest.raises(ValueError, match="'where' is a synthetic Crab-only task"):
        read_crab_plus_records("/nonexistent", ("avqa", "where"), "train")
