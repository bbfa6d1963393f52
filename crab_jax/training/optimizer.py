"""Learning-rate schedules and the AdamW optimizer of the original recipe.

``warmup_decay_log`` is DeepSpeed's ``WarmupDecayLR`` with its default log warmup, which
the original's DeepSpeed config installs (overriding the HF ``cosine`` flag)::

    w = max(2, ceil(warmup_ratio * total))          # DeepSpeed floors warmup at 2 steps
    lr(s) = lr_max * ln(s + 1) / ln(w)               s <  w
    lr(s) = lr_max * max(0, (total - s) / max(1, total - w))   s >= w

``cosine`` is HF's ``get_cosine_schedule_with_warmup`` (linear warmup, cosine to 0).
``s`` counts optimizer updates from 0.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

SCHEDULES = ("warmup_decay_log", "cosine", "constant")


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return int(math.ceil(warmup_ratio * total_steps))


def make_schedule(name: str, lr: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    if total_steps <= 0:
        raise ValueError(f"schedule needs a positive number of steps, got {total_steps}")
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        w = warmup_steps(total_steps, warmup_ratio)

        def cosine(step):
            step = jnp.asarray(step, jnp.float32)
            warm = step / max(1, w)
            progress = (step - w) / max(1, total_steps - w)
            decay = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
            return lr * jnp.where(step < w, warm, decay)

        return cosine
    if name == "warmup_decay_log":
        w = max(2, warmup_steps(total_steps, warmup_ratio))

        def warmup_decay(step):
            step = jnp.asarray(step, jnp.float32)
            warm = jnp.log(step + 1.0) / math.log(w)
            decay = jnp.maximum(0.0, (total_steps - step) / max(1, total_steps - w))
            return lr * jnp.where(step < w, warm, decay)

        return warmup_decay
    raise ValueError(f"config optim.schedule={name!r}; known: {SCHEDULES}")


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clipping then AdamW (torch eps placement: eps added to sqrt(v_hat))."""
    schedule = make_schedule(optim_cfg.schedule, float(optim_cfg.lr), total_steps, float(optim_cfg.warmup_ratio))
    adamw = optax.adamw(schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps),
                        weight_decay=float(optim_cfg.weight_decay))
    parts = [optax.clip_by_global_norm(float(optim_cfg.grad_clip))] if optim_cfg.grad_clip > 0 else []
    return optax.chain(*parts, adamw), schedule
