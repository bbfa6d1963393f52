"""The pure train step: ``(TrainState, batch) -> (TrainState, metrics)``.

One optimizer update from one global batch, split into ``micro_batches`` gradient
accumulation steps (one ``lax.fori_loop``). Gradients only for the trainable weights; frozen
weights enter as constants. The loss is the family's (``family.forward_loss``: for Crab
the LM cross-entropy + mask loss) averaged over micro-batches, as the HF Trainer averages
its GA steps. Metrics are sums (see :mod:`crab_jax.training.metrics`), plus one finiteness
flag per trainable tensor so the host can name the first non-finite one.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from crab_jax.parallel.mesh import BATCH_AXES, batch_sharding, replicated
from crab_jax.parallel.sharding import activation_sharding
from crab_jax.families.base import all_router_towers
from crab_jax.training.metrics import TASK_SUM_PREFIX, per_task_sums, router_keys, router_usage_sums, tower_gates
from crab_jax.models.state_dict import flat_leaves
from crab_jax.training.state import TrainSetup, TrainState, fresh_rng_vars


def split_micro_batches(batch: dict, n: int, mesh) -> dict:
    """``[B, ...] -> [n, B/n, ...]``; micro-batch j takes rows j, j+n, ... so every device keeps
    its own rows (no data movement when B is sharded in contiguous blocks)."""
    if n == 1:
        return jax.tree.map(lambda x: x[None], batch)

    def one(x):
        y = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))

    return jax.tree.map(one, batch)


def tree_all_finite(tree) -> jax.Array:
    """``[n_leaves]`` bool, in ``jax.tree_util.tree_flatten`` order."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])


def tower_samples(tower, batch: dict, cfg) -> tuple[jax.Array, jax.Array]:
    """``(row_segment [b, n], segment_task [b, P])`` of a router tower's rows (see
    :func:`~crab_jax.training.metrics.router_usage_sums`): the LLM's tokens of a packed batch by
    their ``segment_ids``; otherwise the tower's valid rows, one sample (``task_id``) per row."""
    if "segment_ids" in batch:
        if tower.name:
            raise ValueError(f"packed batches: the router usage of the {tower.name!r} tower's rows per sample is not "
                             "implemented (a family with I-LoRA in its encoders trains unpacked: data.packing.seq_len=0)")
        return batch["segment_ids"], batch["segment_task_id"]
    return tower.row_valid(batch, cfg).astype(jnp.int32), batch["task_id"][:, None]


def make_train_step(setup: TrainSetup, *, micro_batches: int, with_seg: bool, num_tasks: int,
                    router_groups: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The un-jitted step (see :func:`jit_train_step`)."""
    family, cfg = setup.family, setup.model_cfg
    towers = [(t, t.num_layers(cfg)) for t in all_router_towers(family)]

    def loss_fn(params, frozen, rng_vars, batch):
        model = setup.merge(params, frozen, rng_vars)
        out, inter = nnx.capture(lambda m: family.forward_loss(m, batch, with_seg), nnx.Intermediate)(model)
        nll, tok = out.lm_sums
        task_id = batch["task_id"]
        # Packed rows (several samples per row): the LM sums and the LLM's router usage are per
        # sample, [b, P], by the row's segments; the rest of the per-sample values are per row.
        sample_task = batch.get("segment_task_id", task_id)
        aux = {
            "loss": out.loss,
            **out.terms,
            "task_nll": per_task_sums(nll, sample_task, num_tasks),
            "task_tokens": per_task_sums(tok, sample_task, num_tasks),
            "task_samples": per_task_sums(jnp.ones_like(nll), sample_task, num_tasks),
        }
        for name, values in out.per_sample.items():
            aux[f"{TASK_SUM_PREFIX}{name}"] = per_task_sums(values, task_id, num_tasks)
        for tower, num_layers in towers:  # the LLM, then the family's encoder towers
            gates = tower_gates(inter, tower.path)
            if gates:  # a tower without I-LoRA (or without media in this bucket) logs nothing
                row_segment, segment_task = tower_samples(tower, batch, cfg)
                usage = router_usage_sums(gates, row_segment, segment_task, num_tasks=num_tasks,
                                          num_layers=num_layers, groups=router_groups)
                sum_key, count_key = router_keys(tower.name)
                aux[sum_key], aux[count_key] = usage
        return out.loss, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        micro = split_micro_batches(batch, micro_batches, setup.mesh)

        def accumulate(carry, xs):
            grads_acc, aux_acc = carry
            index, mb = xs
            rng_vars = fresh_rng_vars(state.rng_vars, state.rng, state.step, index)
            (_, aux), grads = grad_fn(state.params, state.frozen, rng_vars, mb)
            grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
            return (grads, jax.tree.map(jnp.add, aux_acc, aux)), None

        # Zero accumulators and ONE loop over every micro-batch: the model is traced and compiled
        # once (a first micro-batch peeled off outside the loop would compile it twice).
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        first = jax.tree.map(lambda x: x[0], micro)
        aux_shapes = jax.eval_shape(lambda mb: grad_fn(state.params, state.frozen, state.rng_vars, mb)[0][1], first)
        aux_zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shapes)
        if micro_batches == 1:  # no loop to build: the one micro-batch directly
            (grads, aux), _ = accumulate((zeros, aux_zeros), (jnp.int32(0), first))
        else:
            # The trip count passes an optimization barrier, so XLA sees a while loop whose count
            # it cannot read: XLA:TPU compiles the recipe's v4-32 step in a fifth less time than
            # the same loop as a scan of known length, to the same memory per chip
            # (docs/benchmarks.md, "The v4-32 compile").
            count = jax.lax.optimization_barrier(jnp.int32(micro_batches))

            def body(i, carry):
                mb = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), micro)
                return accumulate(carry, (i, mb))[0]

            grads, aux = jax.lax.fori_loop(0, count, body, (zeros, aux_zeros))
        scale = 1.0 / micro_batches
        grads = jax.tree.map(lambda g: g * scale, grads)
        for k in aux:
            if jnp.ndim(aux[k]) == 0:  # the loss and its terms are means: average the micro-batches
                aux[k] = aux[k] * scale
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        aux["grad_norm"] = optax.tree.norm(grads)
        aux["lr"] = jnp.asarray(setup.schedule(state.step), jnp.float32)
        aux["finite_grads"] = tree_all_finite(grads)
        aux["finite_params"] = tree_all_finite(params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, aux

    return train_step


def batch_shardings(batch_shapes: dict, mesh) -> dict:
    return {k: batch_sharding(mesh, len(shape)) for k, shape in batch_shapes.items()}


def jit_train_step(setup: TrainSetup, step_fn, batch_shapes: dict):
    """``jit`` with explicit state/batch placements and the state donated (updated in place); the
    step is traced inside :func:`~crab_jax.parallel.sharding.activation_sharding`, so the models'
    logical activation constraints apply (hidden states sharded over the batch axes under FSDP)."""

    @functools.wraps(step_fn)
    def sharded_step(state, batch):
        with activation_sharding(setup.mesh, setup.rules):
            return step_fn(state, batch)

    return jax.jit(sharded_step, in_shardings=(setup.shardings, batch_shardings(batch_shapes, setup.mesh)),
                   out_shardings=(setup.shardings, replicated(setup.mesh)), donate_argnums=0)


def trainable_names(setup: TrainSetup) -> list[str]:
    """Names of the trainable tensors in the order of the ``finite_*`` flags."""
    return list(flat_leaves(setup.abstract.params))


def first_non_finite(aux: dict, names: Sequence[str]) -> str | None:
    """The first trainable tensor (gradient, then updated value) that is not finite, or the loss."""
    if not np.isfinite(float(aux["loss"])):
        bad_g = np.flatnonzero(~np.asarray(aux["finite_grads"]))
        where = f"; first non-finite gradient: {names[bad_g[0]]}" if len(bad_g) else ""
        return f"loss = {float(aux['loss'])}{where}"
    for kind in ("finite_grads", "finite_params"):
        bad = np.flatnonzero(~np.asarray(aux[kind]))
        if len(bad):
            what = "gradient" if kind == "finite_grads" else "updated parameter"
            return f"{what} {names[bad[0]]}"
    return None
