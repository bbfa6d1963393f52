"""Crab's mask losses (``models/loss.py`` + ``SegModule.forward``): BCE + dice for binary tasks,
cross-entropy for AVSS, weighted by the fraction of each kind of sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_loss_terms(binary_logits: jax.Array, avss_logits: jax.Array, gt_mask: jax.Array,
                    is_avss: jax.Array, is_seg: jax.Array, *, dice_scale: float = 1000.0,
                    eps: float = 1e-6) -> jax.Array:
    """Per-sample ``(BCE, dice, CE)`` → ``[batch, 3]``; a term is 0 where it does not apply.

    Args:
      binary_logits: ``[batch, 1, H, W]``.
      avss_logits: ``[batch, K, H, W]``.
      gt_mask: ``[batch, 1, H, W]`` float: {0, 1} for binary tasks, class indices for AVSS.
      is_avss, is_seg: ``[batch]`` bool; samples with ``is_seg`` False count nowhere.
    """
    if binary_logits.shape[1] != 1:
        raise ValueError("the binary losses need a single-class binary head")
    num_masks = 1 + 1e-8  # the original divides by (num_masks + 1e-8) with one mask per sample
    x = binary_logits[:, 0].astype(jnp.float32)
    g = gt_mask[:, 0].astype(jnp.float32)
    bce = jnp.maximum(x, 0.0) - x * g + jnp.log1p(jnp.exp(-jnp.abs(x)))
    bce = bce.mean((1, 2)) / num_masks

    p = jax.nn.sigmoid(x) / dice_scale
    numerator = 2.0 * (p * g).sum((1, 2))
    denominator = p.sum((1, 2)) + (g / dice_scale).sum((1, 2))
    dice = (1.0 - (numerator + eps) / (denominator + eps)) / num_masks

    is_bin = is_seg & ~is_avss
    is_av = is_seg & is_avss
    num_classes = avss_logits.shape[1]

    def cross_entropy(args):
        logits, g = args
        labels = jnp.clip(g.astype(jnp.int32), 0, num_classes - 1)  # torch .long() truncates
        # Classes last: the seg module's maps are channels-last, so under jit this transpose
        # cancels the module's own and the softmax reduces over the minor axis. The label's
        # log-probability is picked by a one-hot select (exact: one nonzero term), not a gather:
        # a gather's gradient is a scatter-add over the [batch, H, W, K] maps, several times
        # slower on XLA:CPU.
        logp = jax.nn.log_softmax(jnp.moveaxis(logits, 1, -1).astype(jnp.float32), axis=-1)
        is_label = labels[..., None] == jnp.arange(num_classes)
        return -jnp.sum(jnp.where(is_label, logp, 0.0), axis=-1).mean((1, 2))

    # Skipped when no sample is AVSS (most batches): the [batch, H, W, K] softmax is the loss's cost.
    ce = jax.lax.cond(jnp.any(is_av), cross_entropy, lambda _: jnp.zeros(g.shape[:1], jnp.float32),
                      (avss_logits, g))
    return jnp.stack([jnp.where(is_bin, bce, 0.0), jnp.where(is_bin, dice, 0.0), jnp.where(is_av, ce, 0.0)], -1)


def mask_loss(binary_logits: jax.Array, avss_logits: jax.Array, gt_mask: jax.Array, is_avss: jax.Array,
              is_seg: jax.Array, **weights: float) -> tuple[jax.Array, jax.Array]:
    """Crab's segmentation loss → (scalar loss, per-sample terms ``[batch, 3]``); see
    :func:`combine_mask_terms` for the weighting."""
    terms = mask_loss_terms(binary_logits, avss_logits, gt_mask, is_avss, is_seg)
    return combine_mask_terms(terms, is_avss, is_seg, **weights), terms


def combine_mask_terms(terms: jax.Array, is_avss: jax.Array, is_seg: jax.Array, *, bce_weight: float = 1.0,
                       dice_weight: float = 0.5, avss_ce_weight: float = 1.0) -> jax.Array:
    """The scalar loss of :func:`mask_loss_terms`' ``[batch, 3]`` terms.

    Terms are summed over samples; the binary part (``bce_weight·ΣBCE + dice_weight·Σdice``)
    is multiplied by ``n_bin / (n_bin + n_avss)`` and the AVSS part by
    ``n_avss / (n_bin + n_avss)``. The weights 1 and ½ are fixed in the original's forward
    (its constructor's loss weights are ignored). No segmentation sample → 0.
    """
    n_bin = jnp.sum(is_seg & ~is_avss).astype(jnp.float32)
    n_av = jnp.sum(is_seg & is_avss).astype(jnp.float32)
    total = jnp.maximum(n_bin + n_av, 1.0)
    sums = terms.sum(0)
    return (bce_weight * sums[0] * (n_bin / total) + dice_weight * sums[1] * (n_bin / total)
            + avss_ce_weight * sums[2] * (n_av / total))
