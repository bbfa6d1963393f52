"""Record -> Crab Example: the record's own media specs, exact plan info, fbank trimming, slots."""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.families.crab import examples as E
from crab_jax.families.crab import model as crab
from crab_jax.families.crab.example_builder import settings_from
from tests.data.pipeline.crab_data import TASKS, clean_data

clean = pytest.fixture(scope="module", name="clean")(clean_data)


def test_seg_task_constants_match_the_model():
    assert E.SEG_TASKS == crab.SEG_TASKS and E.MULTICLASS_SEG_TASKS == crab.MULTICLASS_SEG_TASKS


def test_example_follows_record_specs_and_plan_info_is_exact(clean):
    root, records, _, tok, cfg, settings = clean
    by_task = {}
    for r in records:
        by_task.setdefault(r.task, r)
    for task, r in by_task.items():
        ex = E.build_example(r, tok, settings)
        info = E.plan_info(r, tok, settings)
        assert info == E.example_plan_info(ex, settings), task
        assert ex.fbank.shape[1] % 16 == 0 and ex.fbank.shape[2] == 128
        assert ex.frames.dtype == np.uint8 and ex.frames.shape[1:] == (settings.image_size,) * 2 + (3,)
    # AVE: 10 frames of the video file and 10 clip segments; ARIG: one image and tot=5 segments.
    assert E.build_example(by_task["ave"], tok, settings).frames.shape[0] == by_task["ave"].num_frames
    arig = E.build_example(by_task["arig"], tok, settings)
    assert arig.frames.shape[0] == 1 and arig.fbank.shape[0] == by_task["arig"].audio.tot
    s4 = E.build_example(by_task["s4"], tok, settings)
    assert s4.is_seg and not s4.is_avss and set(np.unique(s4.gt_mask)) <= {0.0, 1.0} and s4.gt_mask.max() == 1
    assert not arig.is_seg and not arig.gt_mask.any()


def test_fbank_trim_keeps_whole_beats_patches_and_rejects_short_segments():
    fb = np.random.default_rng(0).normal(size=(3, 98, 128)).astype(np.float32)
    out = E.trim_to_patches(fb, "x.wav")
    assert out.shape == (3, 96, 128) and np.array_equal(out, fb[:, :96])
    assert E.trim_to_patches(fb[:, :16], "x.wav").shape == (3, 16, 128)
    with pytest.raises(BadRecordError, match="x.wav.*too short"):
        E.trim_to_patches(fb[:, :15], "x.wav")


def test_too_many_media_for_the_slots_is_a_bad_record(clean):
    root, records, _, tok, cfg, _ = clean
    small = settings_from(cfg, root, TASKS, frame_slots=4, audio_slots=10)
    ave = next(r for r in records if r.task == "ave")
    with pytest.raises(BadRecordError, match="data.frame_slots=4"):
        E.plan_info(ave, tok, small)
