"""Frame / audio slots sized from the run's tasks (issue 11: Ref-AVS test prompts show a video
and an image, 11 frames, and were all rejected with ``data.frame_slots = 10``)."""

from __future__ import annotations

import dataclasses

import pytest

from crab_jax.config.schema import get_config
from crab_jax.config.sections import RunConfig
from crab_jax.data.records.crab import read_crab_task
from crab_jax.data.records.record import AudioSpec
from crab_jax.families.crab import media_slots as MS
from crab_jax.families.crab.example_builder import example_builder
from crab_jax.families.crab.presets import tiny_crab_config
from crab_jax.families.crab.prompts import crab_instruction
from tests.data.pipeline.crab_data import clean_data

clean = pytest.fixture(scope="module", name="clean")(clean_data)


def _data(**changes):
    return dataclasses.replace(RunConfig.from_config(get_config()).data, **changes)


def _need_of(record) -> MS.SlotNeed:
    """Frames and segments a record's prompt shows, from its prompt text and media specs."""
    text = crab_instruction(record)
    video = (len(record.frame_paths) or record.num_frames) if "<video>" in text else 0
    spec: AudioSpec | None = record.audio if "<audio>" in text else None
    segments = 0 if spec is None else {"clip": spec.tot, "frame": 1, "avqa": 10}[spec.kind]
    return MS.SlotNeed(video + ("<image>" in text), segments)


@pytest.fixture(scope="module")
def ref_avs_test_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("refavs")
    (root / "ref_avs").mkdir()
    (root / "ref_avs" / "metadata.csv").write_text("vid,uid,split,fid,exp\nv1,v1_dog_0,test_s,0,the barking dog\n")
    return read_crab_task("ref-avs", "test", root).records


def test_table_matches_what_the_prompts_show(clean, ref_avs_test_records):
    _, records, *_ = clean
    seen = {}
    for r in list(records) + list(ref_avs_test_records):
        seen.setdefault((r.task, r.mode), _need_of(r))
    assert ("ref-avs", "test") in seen and len(seen) > 2
    for key, need in seen.items():
        assert MS.SLOT_NEEDS[key] == need, key
    assert seen[("ref-avs", "test")].frames == 11  # the video's 10 frames + the <image>


def test_zero_sizes_the_slots_from_the_tasks_and_explicit_values_are_kept():
    assert MS.resolve_slots(("ref-avs",), 0, 0) == (11, 10)
    assert MS.resolve_slots(("s4", "arig"), 0, 0) == (5, 5)
    assert MS.resolve_slots(("ref-avs",), 12, 10) == (12, 10)
    assert MS.resolve_slots(("ave",), 3, 2, check=False) == (3, 2)  # random batches: no prompts


def test_a_slot_count_no_record_of_a_task_can_fit_is_a_start_up_error():
    with pytest.raises(ValueError, match=r"data\.frame_slots=10 .*ref-avs \(test prompts\) needs 11"):
        MS.resolve_slots(("ave", "ref-avs"), 10, 10)
    with pytest.raises(ValueError, match=r"data\.audio_slots=5 .*ave \(train prompts\) needs 10"):
        MS.resolve_slots(("ave",), 10, 5)
    with pytest.raises(ValueError, match="set data.frame_slots explicitly"):
        MS.resolve_slots(("some_new_task",), 0, 4)
    cfg = tiny_crab_config()
    with pytest.raises(ValueError, match="data.frame_slots=10"):
        example_builder(cfg, _data(tasks=("ref-avs",), frame_slots=10), "")


def test_the_default_config_fits_ref_avs_test_prompts():
    builder = example_builder(tiny_crab_config(), _data(tasks=("s4", "ms3", "ref-avs")), "")
    assert builder.settings.frame_slots == 11 and builder.settings.audio_slots == 10


def test_every_paper_stage_resolves_its_slots():
    # Visual / audio / segmentation pretraining show one medium only: the other keeps one unused
    # slot (the paper configs size both from the tasks; a stage must not stop at start-up).
    from crab_jax.families.crab.recipes import STAGES

    for stage, spec in STAGES.items():
        slots = MS.resolve_slots(spec["tasks"], MS.FROM_TASKS, MS.FROM_TASKS)
        needs = MS.task_needs(spec["tasks"])
        assert slots.frames == max(MS.MIN_SLOTS, max(n.frames for n in needs.values())), stage
        assert slots.audio_segments == max(MS.MIN_SLOTS, max(n.audio_segments for n in needs.values())), stage
    with pytest.raises(ValueError, match="none of the tasks has a known media need"):
        MS.resolve_slots(("no_such_task",), MS.FROM_TASKS, 1)
