"""Mask losses: parity with the original's loss terms and loss on the fixture's outputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crab_jax.models.seg.losses import mask_loss
from tests.conftest import assert_parity


@pytest.mark.parity
def test_mask_loss_matches_original(seg):
    a, out = seg["arrays"], seg["out"]
    is_avss = jnp.asarray(a["task_is_avss"])
    is_seg = jnp.ones_like(is_avss)
    loss_fn = jax.jit(functools.partial(mask_loss, **seg["loss_weights"]))
    loss, terms = loss_fn(out.binary_logits, out.avss_logits, a["gt_mask"], is_avss, is_seg)
    assert_parity(terms, a["loss_terms_bce_dice_ce"], "loss_terms_bce_dice_ce")
    assert_parity(loss, a["mask_loss"], "mask_loss")


@pytest.mark.parity
def test_mask_loss_ignores_non_segmentation_samples(seg):
    """Dropping a sample from ``is_seg`` = the original's loss on the remaining samples."""
    a, out = seg["arrays"], seg["out"]
    ref_terms = a["loss_terms_bce_dice_ce"].astype(np.float64)
    is_avss = a["task_is_avss"]
    dropped = int(np.flatnonzero(~is_avss)[0])
    keep = np.ones(len(is_avss), bool)
    keep[dropped] = False
    w = seg["loss_weights"]
    loss_fn = jax.jit(functools.partial(mask_loss, **w))
    loss, terms = loss_fn(out.binary_logits, out.avss_logits, a["gt_mask"], jnp.asarray(is_avss), jnp.asarray(keep))
    assert np.all(np.asarray(terms)[dropped] == 0)
    n_bin, n_av = np.sum(keep & ~is_avss), np.sum(keep & is_avss)
    kept = ref_terms[keep].sum(0)
    expected = ((w["bce_weight"] * kept[0] + w["dice_weight"] * kept[1]) * n_bin / (n_bin + n_av)
                + w["avss_ce_weight"] * kept[2] * n_av / (n_bin + n_av))
    assert_parity(loss, expected, "mask_loss without one binary sample")
    none, _ = loss_fn(out.binary_logits, out.avss_logits, a["gt_mask"], jnp.asarray(is_avss),
                        jnp.zeros(len(is_avss), bool))
    assert float(none) == 0.0


def test_mask_loss_gradient_matches_gather_formulation():
    """The CE picks the label's log-probability by a one-hot select: value and gradient equal the
    textbook gather (``take_along_axis``) form, on random maps with every class present."""
    rng = np.random.default_rng(0)
    b, k, h, w = 3, 5, 6, 7
    binary = jnp.asarray(rng.normal(size=(b, 1, h, w)), jnp.float32)
    avss = jnp.asarray(rng.normal(size=(b, k, h, w)), jnp.float32)
    gt = jnp.asarray(rng.integers(0, k, size=(b, 1, h, w)), jnp.float32)
    is_avss, is_seg = jnp.asarray([True, False, True]), jnp.ones(b, bool)

    def gather_ce(logits):
        logp = jax.nn.log_softmax(logits, axis=1)
        picked = jnp.take_along_axis(logp, gt.astype(jnp.int32), axis=1)[:, 0]
        return jnp.where(is_avss, -picked.mean((1, 2)), 0.0).sum()

    ours = lambda logits: mask_loss(binary, logits, gt, is_avss, is_seg)[1][:, 2].sum()
    np.testing.assert_allclose(ours(avss), gather_ce(avss), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(avss), jax.grad(gather_ce)(avss), rtol=1e-5, atol=1e-7)
