"""The AVUIE_2 layout of the synthetic dataset: Crab+'s reader reads every task back, the media
are the AV-UIE files (linked, not encoded twice), the rows describe the same samples, the
S4 / ARIG targets agree with the masks found by spec B.6's GT rule, and it is deterministic."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from crab_jax.data.media.audio import load_audio
from crab_jax.data.records.crab_answers import normalise_label, parse_answer, parse_box, parse_event, parse_s4_object
from crab_jax.data.records.crab_plus import CRAB_PLUS_TARGET, read_crab_plus_task
from crab_jax.data.synthetic import avuie2, scenes
from crab_jax.data.synthetic import generate as gen
from crab_jax.data.synthetic.records import LAYOUT
from tests.data.synthetic.media_checks import (ALL_TASKS_TEST, ALL_TASKS_TRAIN, decode_mp4, generate_small,
                                               present_classes, tone_class)

B6_COORDS = re.compile(r"\[(\d+),(\d+)(?:,(\d+),(\d+))?\]")  # spec B.6 stage 2, step 1
SIZE = 224                                                   # spec B.6: prompts and GT at 224 x 224


def _rows(root, task, split) -> list[dict]:
    return json.loads((root / avuie2.annotation_file(task, split)).read_text())


def _b6_gt_mask(root, image_path: str) -> np.ndarray:
    """Spec B.6 step 5 on a record's image path: ``[224, 224]`` bool."""
    path = image_path.replace("/frames/", "/labels_rgb/").replace(".jpg", ".png")
    with Image.open(root / path) as im:
        return np.asarray(im.convert("L").resize((SIZE, SIZE), Image.NEAREST)) > 0


def _b6_prompt(text: str) -> tuple[list[int] | None, list[list[int]]]:
    """Spec B.6 step 1: the first 4-number match (box) and the 2-number matches (points)."""
    boxes, points = [], []
    for m in B6_COORDS.finditer(text):
        nums = [int(g) for g in m.groups() if g is not None]
        (boxes if len(nums) == 4 else points).append(nums)
    return (boxes[0] if boxes else None), points


def _inside_frame(x1, y1, x2, y2) -> bool:
    return 0 <= x1 < x2 < SIZE and 0 <= y1 < y2 < SIZE  # spec B.6 step 3


@pytest.mark.parametrize("task", scenes.AVUIE2_TASKS)
def test_every_task_reads_back_through_the_crab_plus_reader(dataset_all_tasks, task):
    root = dataset_all_tasks
    counts = json.loads((root / "manifest.json").read_text())["counts"][task]
    for mode, n in (("train", ALL_TASKS_TRAIN), ("test", ALL_TASKS_TEST)):
        result = read_crab_plus_task(task, mode, root)  # strict: any bad row raises
        assert not result.errors
        want = n * scenes.AVS_UNITS if (task, mode) == ("s4", "test") else n  # S4 test: a row per frame
        assert len(result.records) == want == counts[mode]["avuie2_records"], (task, mode)
        for r, row in zip(result.records, _rows(root, task, mode)):
            for p in r.media_paths():
                assert (root / p).is_file(), p
            target = row[CRAB_PLUS_TARGET[task]]  # test rows carry the training target too
            assert isinstance(target, str) and target
            assert (r.answer == target) if mode == "train" else bool(r.gt)


def test_media_are_the_av_uie_files(dataset):
    """Each AVUIE_2 media file is the AV-UIE one (a hard link): nothing is encoded twice."""
    root = dataset
    folders = {"ave": ("ave/AVE", "ave/audio_data"), "avqa": ("music_avqa/video_data", "music_avqa/audio_data")}
    for task, sources in folders.items():
        for kind, source in zip(("video", "audio"), sources):
            linked = sorted((root / avuie2.ROOT / task / kind).iterdir())
            assert len(linked) == len(list((root / source).iterdir())) > 0
            for f in linked:
                assert os.path.samefile(f, root / source / f.name), f
    for task in ("s4", "arig"):
        task_dir = root / avuie2.ROOT / task
        linked = [f for f in (task_dir / "v1s").rglob("*") if f.is_file()]
        assert linked
        for f in linked:
            rel = str(f.relative_to(task_dir)).replace("/labels_rgb/", "/labels_semantic/")
            assert os.path.samefile(f, root / LAYOUT[task]["root"] / rel), f


def test_rows_describe_the_av_uie_samples(dataset):
    """The same samples in both layouts, and each target text parses to its row's fields."""
    root = dataset
    for split in scenes.SPLITS:
        for crab, plus in zip(gen.load_records(root, "ave", split), _rows(root, "ave", split), strict=True):
            assert [plus[k] for k in ("vid", "event", "start_time", "end_time")] == \
                [crab[k] for k in ("vid", "event", "start_time", "end_time")]
            assert plus["video_path"] == f"{crab['vid']}.mp4" and plus["audio_path"] == f"{crab['vid']}.mp3"
            assert parse_event(plus["label_content"]) == (normalise_label(crab["event"]),
                                                          (crab["start_time"], crab["end_time"]))
        for crab, plus in zip(gen.load_records(root, "avqa", split), _rows(root, "avqa", split), strict=True):
            assert [plus[k] for k in ("question_id", "question", "answer", "type", "video_id")] == \
                [crab[k] for k in ("question_id", "question", "answer", "type", "video_id")]
            assert parse_answer(plus["label"]) == normalise_label(crab["answer"])
            assert plus["label"] == f"So the answer is <answer>{crab['answer']}</answer>."
        for crab, plus in zip(gen.load_records(root, "arig", split), _rows(root, "arig", split), strict=True):
            box = parse_box(plus["label_content"])  # the Crab ARIG convention: inclusive 224-px corners
            assert box == (*crab["top_left"], *crab["bottom_right"]) and _inside_frame(*box)
            assert plus["label_content"].startswith(f"The sounding object is {crab['a_obj']}. ")
            image = plus["image_path" if split == "train" else "visual_path"]
            assert image == crab["frame_path"] and plus["audio_path"] == crab["audio_path"]
            if split == "test":
                assert (plus["top_left"], plus["bottom_right"]) == (crab["top_left"], crab["bottom_right"])
                assert image.endswith(f"/{plus['frame_idx']}.jpg")
        per_clip = 1 if split == "train" else scenes.AVS_UNITS
        plus_s4 = _rows(root, "s4", split)
        crab_s4 = gen.load_records(root, "s4", split)
        assert len(plus_s4) == per_clip * len(crab_s4)
        for k, plus in enumerate(plus_s4):
            crab = crab_s4[k // per_clip]
            assert (plus["uid"], plus["vid"], plus["a_obj"]) == (crab["uid"], crab["vid"], crab["a_obj"])
            assert parse_s4_object(plus["label_content"]) == normalise_label(crab["a_obj"])
            if split == "test":
                assert plus["frame_idx"] == k % per_clip


def test_s4_gt_mask_by_the_b6_rule_and_the_target_geometry(dataset):
    """The GT mask sits where spec B.6 looks for it (every S4 frame row, train frame 0 too); the
    target's box is that mask's bounding box at 224 px and its three points lie on the mask."""
    root = dataset
    for split, key in (("train", "image_path"), ("test", "visual_path")):
        records = read_crab_plus_task("s4", split, root).records
        for r, row in zip(records, _rows(root, "s4", split), strict=True):
            assert r.image_path == f"{avuie2.task_folder('s4')}/{row[key]}"
            gt = _b6_gt_mask(root, r.image_path)
            box, points = _b6_prompt(row["label_content"])
            ys, xs = np.nonzero(gt)
            assert box == [xs.min(), ys.min(), xs.max(), ys.max()] and _inside_frame(*box)
            assert len(points) == 3 and len({tuple(p) for p in points}) == 3
            assert all(gt[y, x] for x, y in points), (row[key], points)
            assert r.frame_idx == (0 if split == "train" else row["frame_idx"])


def test_ks_clips_and_targets(dataset_all_tasks):
    """KS: the action is the class of the tone heard, visible in the frames; target = test GT."""
    root = dataset_all_tasks
    for split in scenes.SPLITS:
        for r in read_crab_plus_task("ks", split, root).records:
            action = r.fields["action"]
            cls = scenes.CLASS_NAMES.index(action)
            frames, seconds = decode_mp4(root / r.video_path)
            audio = load_audio(root / r.audio_path)
            assert frames.shape == (scenes.KS_UNITS, scenes.FRAME_SIZE, scenes.FRAME_SIZE, 3)
            assert seconds == pytest.approx(scenes.KS_UNITS * scenes.UNIT_SAMPLES / scenes.SAMPLE_RATE, abs=1e-6)
            assert audio.shape == (scenes.KS_UNITS * scenes.UNIT_SAMPLES,)
            assert tone_class(audio) == cls
            assert all(cls in present_classes(f) and len(present_classes(f)) == 2 for f in frames)
            expected = f"<answer>{action}</answer>"
            assert (r.answer if split == "train" else r.gt) == expected


def test_avuie2_json_is_deterministic(dataset_all_tasks, tmp_path):
    generate_small(tmp_path, 0, num_train=ALL_TASKS_TRAIN, num_test=ALL_TASKS_TEST, tasks=scenes.ALL_TASKS)
    names = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / avuie2.ROOT).rglob("*.json"))
    assert len(names) == 2 * len(scenes.AVUIE2_TASKS)
    for name in names + ["manifest.json"]:
        assert (tmp_path / name).read_bytes() == (dataset_all_tasks / name).read_bytes(), name


def test_ks_is_written_only_in_the_avuie2_layout(tmp_path):
    m = generate_small(tmp_path, 0, num_train=1, num_test=1, tasks=("ks",))
    assert m["tasks"] == ["ks"] and "ks" not in m["layout"] and set(m["avuie2_layout"]) == {"ks"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [avuie2.ROOT, "manifest.json"]
    assert m["counts"]["ks"]["train"] == {"records": 0, "avuie2_records": 1, "clips": 1}
