"""Regression (issue 11): the seg module reads the CLIP features of the frame whose mask is the
target (the record's ``<image>``, or frame ``frame_idx`` of the ``<video>``), not frame 0."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.families.crab import collate as C
from crab_jax.families.crab import examples as E
from crab_jax.families.crab.model import Crab
from tests.data.pipeline.crab_data import clean_data
from tests.families.crab.generation_helpers import frame_features

clean = pytest.fixture(scope="module", name="clean")(clean_data)


def test_seg_frame_slot_is_the_image_or_the_masked_video_frame():
    from crab_jax.data.records.record import Record

    frames = tuple(f"f/{i}.jpg" for i in range(10))
    train = Record(family="crab", task="ms3", mode="train", split="train", source="x#0", frame_paths=frames,
                   image_path=frames[3], frame_idx=3)
    assert E.seg_frame_slot(train, [("<video>", 10)]) == 3
    # Ref-AVS test: video (10 frames) + image -> the image's row; AVSS test / QS: the image alone.
    assert E.seg_frame_slot(train, [("<video>", 10), ("<image>", 1)]) == 10
    assert E.seg_frame_slot(train, [("<image>", 1)]) == 0
    with pytest.raises(BadRecordError, match="outside the video"):
        E.seg_frame_slot(dataclasses.replace(train, frame_idx=7), [("<video>", 5)])
    with pytest.raises(BadRecordError, match="frame_idx"):
        E.seg_frame_slot(dataclasses.replace(train, frame_idx=None), [("<video>", 10)])


@pytest.fixture(scope="module")
def later_frame_batch(clean):
    """An S4 training record turned into an MS3-style one about frame i > 0, collated."""
    root, records, _, tok, cfg, settings = clean
    s4 = next(r for r in records if r.task == "s4" and r.frame_paths)
    i = len(s4.frame_paths) - 1
    rec = dataclasses.replace(s4, frame_idx=i, image_path=s4.frame_paths[i])
    ex = E.build_example(rec, tok, settings)
    assert ex.is_seg and ex.seg_frame == i
    assert not np.array_equal(ex.frames[i], ex.frames[0]), "test data: frame i must differ from frame 0"
    info = E.plan_info(rec, tok, settings)
    batch = C.collate([ex], Bucket(max(info.expanded_len, 8), info.fbank_frames), settings,
                      C.CollateConfig.from_crab(cfg))
    np.testing.assert_array_equal(batch["seg_frame"], [i])
    return cfg, batch, i


def test_seg_module_receives_the_target_frames_features(later_frame_batch):
    cfg, batch, i = later_frame_batch
    model = Crab(cfg, rngs=nnx.Rngs(0))
    model.eval()
    batch = jax.tree.map(jnp.asarray, batch)
    out = nnx.jit(lambda m, b: m(b))(model, batch)
    _, taps = nnx.jit(lambda m, x: m.encode_visual(x))(model, batch["frames"])

    def seg_logits(frame):
        feats = frame_features(cfg, taps, [frame])
        ref = nnx.jit(lambda m, p, f: m.seg_module(p, f, batch["is_avss"]))(
            model, out.pred_embeddings, [jnp.asarray(f) for f in feats])
        return np.asarray(ref.binary_logits)

    target, first = seg_logits(i), seg_logits(0)
    assert np.abs(target - first).max() > 1e-4, "frame i and frame 0 give the same masks: the test cannot tell"
    np.testing.assert_allclose(np.asarray(out.binary_logits), target, rtol=1e-5, atol=1e-5)
