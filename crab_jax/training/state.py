"""The train state (a pure pytree) and its sharded initialisation.

The model is split once (``nnx.split``) into a static ``graphdef`` and three pure dicts:
trainable weights (optimizer state only for these), frozen weights (may be stored in
bf16) and dropout RNG variables. Initialisation never materialises the model on one
host: shapes come from ``jax.eval_shape``, placements from the parameters' logical axes
and the config's rules, and ``jit(init, out_shardings=...)`` creates each shard in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from crab_jax.models.rngs import make_rngs
from crab_jax.parallel.mesh import replicated
from crab_jax.families.base import Family
from crab_jax.models.ilora import record_router_gates
from crab_jax.models.layers import as_dtype
from crab_jax.parallel.sharding import weight_shardings
from crab_jax.models.state_dict import path_str
from crab_jax.training.trainable import check_patterns_match, trainable_filter, weights_filter

@flax.struct.dataclass
class TrainState:
    step: jax.Array      # [] int32: optimizer updates done
    params: Any          # trainable weights, nested dict (model.param_dtype)
    frozen: Any          # frozen weights, nested dict (model.frozen_param_dtype)
    rng_vars: Any        # dropout RNG variables, rebuilt every step from (rng, step)
    opt_state: Any       # optax state over ``params`` only
    rng: jax.Array       # [2] uint32: the run's base key (raw key data, checkpointable)


@dataclasses.dataclass
class TrainSetup:
    """Everything static about a run's state: how to build, place and merge it."""

    family: Family
    model_cfg: Any               # the family's model config (e.g. a CrabConfig)
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    rules: tuple                 # logical -> mesh axes of parameters and activations (mesh.rules)
    shardings: TrainState        # NamedSharding per leaf
    abstract: TrainState         # ShapeDtypeStruct (with .sharding) per leaf
    trainable_paths: list[str]
    init_fn: Callable[[], TrainState]
    # The same without the frozen weights (``frozen={}``): XLA drops their random init, for runs
    # whose frozen weights all come from a converted checkpoint.
    init_trainable_fn: Callable[[], TrainState]
    uneven: list[str]            # weights whose sharding was dropped on a dim the mesh does not divide

    def merge(self, params, frozen, rng_vars) -> nnx.Module:
        return nnx.merge(self.graphdef, params, frozen, rng_vars)


def build_model(family: Family, model_cfg, seed: int) -> nnx.Module:
    """The family's model in training mode (dropout on) with router-gate recording on."""
    model = family.build_model(model_cfg, make_rngs(seed))
    model.train()
    record_router_gates(model, True)
    return model


def split_model(model: nnx.Module, patterns: Sequence[str]):
    """``graphdef, trainable, frozen, rng_vars`` (nnx.State each)."""
    return nnx.split(model, trainable_filter(patterns), weights_filter(), ...)


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_setup(family: Family, model_cfg, *, patterns: Sequence[str], tx: optax.GradientTransformation,
               schedule: optax.Schedule, mesh: Mesh, rules, seed: int, param_dtype="float32",
               frozen_param_dtype="float32") -> TrainSetup:
    """Shapes, shardings and the jitted sharded initialiser; nothing is allocated here."""
    param_dtype, frozen_dtype = as_dtype(param_dtype), as_dtype(frozen_param_dtype)
    abstract_model = nnx.eval_shape(lambda: build_model(family, model_cfg, seed))
    graphdef, params_s, frozen_s, _ = split_model(abstract_model, patterns)
    trainable_paths = [path_str(p) for p, _ in nnx.to_flat_state(params_s)]
    all_paths = trainable_paths + [path_str(p) for p, _ in nnx.to_flat_state(frozen_s)]
    check_patterns_match(patterns, all_paths)

    def init_fn() -> TrainState:
        model = build_model(family, model_cfg, seed)
        _, params, frozen, rng_vars = split_model(model, patterns)
        params = _cast_floats(nnx.to_pure_dict(params), param_dtype)
        frozen = _cast_floats(nnx.to_pure_dict(frozen), frozen_dtype)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                          rng_vars=nnx.to_pure_dict(rng_vars), opt_state=tx.init(params),
                          rng=jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32))

    abstract = jax.eval_shape(init_fn)
    p_sh, uneven_p = weight_shardings(params_s, mesh, rules)
    f_sh, uneven_f = weight_shardings(frozen_s, mesh, rules)
    rep = replicated(mesh)
    is_sds = lambda x: isinstance(x, jax.ShapeDtypeStruct)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, p_sh,
                                   transform_non_params=lambda _: rep, is_leaf=is_sds)
    shardings = TrainState(step=rep, params=p_sh, frozen=f_sh, rng_vars=jax.tree.map(lambda _: rep, abstract.rng_vars),
                           opt_state=opt_sh, rng=rep)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return TrainSetup(family=family, model_cfg=model_cfg, graphdef=graphdef, tx=tx, schedule=schedule, mesh=mesh,
                      rules=tuple(rules), shardings=shardings, abstract=abstract, trainable_paths=trainable_paths,
                      init_fn=jax.jit(init_fn, out_shardings=shardings),
                      init_trainable_fn=jax.jit(lambda: init_fn().replace(frozen={}),
                                                out_shardings=shardings.replace(frozen={})),
                      uneven=uneven_p + uneven_f)


def fresh_rng_vars(rng_vars, base_key_data: jax.Array, step: jax.Array, micro: jax.Array | int = 0):
    """Dropout streams as a pure function of (run key, step, micro-batch): resume is bit-exact.

    Every RNG key variable gets its own key ``fold_in(base, step, micro, i)`` (split along a
    scanned layer axis); every counter restarts at 0.
    """
    base = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(base_key_data), step), micro)
    leaves, treedef = jax.tree_util.tree_flatten(rng_vars)
    out = []
    for i, x in enumerate(leaves):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            k = jax.random.fold_in(base, i)
            out.append(jax.random.split(k, x.shape) if x.shape else k)
        else:
            out.append(jnp.zeros_like(x))
    return jax.tree_util.tree_unflatten(treedef, out)
