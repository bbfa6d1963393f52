"""A run's static construction, shared by training, inference and the AOT check.

:func:`run_model_config` resolves the family's model config (with the tokenizer's
vocabulary), :func:`build_setup` builds the mesh, optimizer and sharded state layout
(:class:`~crab_jax.training.state.TrainSetup`; nothing is compiled or allocated), and
:func:`initial_state` gives the weights before any resume: the seed's, then
``model.init_checkpoint``, then ``model.init_from_runs``.
"""

from __future__ import annotations

import logging
import math

import jax

from crab_jax import families
from crab_jax.checkpoints.converted import frozen_from_seed, initial_weights
from crab_jax.config.sections import RunConfig
from crab_jax.data.sources import RECORD_SOURCES, DataSetup, prepare_data
from crab_jax.families.base import Family
from crab_jax.parallel.mesh import check_global_batch, make_mesh, rules_from_config
from crab_jax.training.compiled import compile_once
from crab_jax.training.optimizer import make_optimizer
from crab_jax.training.state import TrainSetup, make_setup

log = logging.getLogger("crab_jax.train")

# XLA:CPU options for the one-off initialiser: it runs once and its output is exact integer /
# elementwise work, but the default LLVM pipeline spends ~25 s optimising the hundreds of
# per-weight RNG ops of even a tiny Crab. Every caller of build_setup (trainer, infer) uses it,
# so the frozen weights rebuilt from the seed are the same everywhere.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def resolve(config) -> tuple[RunConfig, Family]:
    """The typed run config and its model family (from a ConfigDict, a dict or a RunConfig)."""
    run = RunConfig.from_config(config)
    return run, families.get(run.model.family)


def total_steps(run: RunConfig, data_iter=None) -> int:
    """``train.num_steps``, else ``train.epochs`` epochs of the data iterator (or of ``data.num_examples``)."""
    if run.train.num_steps > 0:
        return int(run.train.num_steps)
    per_epoch = getattr(data_iter, "batches_per_epoch", None)
    if per_epoch is None:
        per_epoch = math.ceil(int(run.data.num_examples) / int(run.train.global_batch))
    return int(run.train.epochs) * int(per_epoch)


def run_model_config(run: RunConfig, family: Family, data: DataSetup | None = None):
    """The family's model config for the run's ``model`` section, with the tokenizer's base vocabulary
    when ``model.base_vocab = -1``. Without ``data``, a records source is resolved first (for
    ``synthetic``: the dataset and tokenizer are made if missing)."""
    base = None
    if int(run.model.base_vocab) < 0 and run.data.source in RECORD_SOURCES:
        data = data if data is not None else prepare_data(run.data, family, progress=False)
        base = data.base_vocab
    return family.model_config(run.model, base)


def build_setup(config, *, model_cfg=None, steps: int | None = None, devices=None) -> tuple[TrainSetup, int, int]:
    """Validates sizes and builds the run's static setup: ``(setup, steps, per-step micro batch)``.

    ``model_cfg`` defaults to :func:`run_model_config`; ``steps`` (the schedule's length) to
    :func:`total_steps` without a data iterator; ``devices`` (the mesh's) to every device of the
    run (the AOT check passes a TPU slice's compile-only devices).
    """
    run, family = resolve(config)
    model_cfg = model_cfg if model_cfg is not None else run_model_config(run, family)
    devices = list(jax.devices() if devices is None else devices)
    mesh = make_mesh(run.mesh.sizes, devices)
    micro = check_global_batch(int(run.train.global_batch), int(run.train.micro_batches), mesh)
    processes = len({d.process_index for d in devices})
    if run.train.global_batch % processes:
        raise ValueError(f"config train.global_batch={run.train.global_batch} is not divisible by the "
                         f"{processes} processes (hosts)")
    steps = int(steps) if steps is not None else total_steps(run)
    tx, schedule = make_optimizer(run.optim, steps)
    setup = make_setup(family, model_cfg, patterns=tuple(run.trainable), tx=tx, schedule=schedule, mesh=mesh,
                       rules=rules_from_config(run.mesh.rules), seed=int(run.seed),
                       param_dtype=run.model.param_dtype, frozen_param_dtype=run.model.frozen_param_dtype)
    setup.init_fn = quick_compiled_init(setup.init_fn, mesh)
    setup.init_trainable_fn = quick_compiled_init(setup.init_trainable_fn, mesh)
    return setup, steps, micro


def quick_compiled_init(init_fn, mesh):
    """``init_fn`` (a jitted function of no arguments on ``mesh``), compiled on first call
    (:func:`~crab_jax.training.compiled.compile_once`), with :data:`CPU_INIT_COMPILER_OPTIONS`
    when the backend is the CPU."""
    options = CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    compiled = []

    def init():
        if not compiled:
            compiled.append(compile_once(init_fn.lower(), mesh, options))
        return compiled[0]()

    return init


def unused_modules(run: RunConfig, family: Family) -> tuple[str, ...]:
    """Module paths the run never uses (the family's answer for its seg branch and tasks; none
    for a family without the hook)."""
    if family.unused_modules is None:
        return ()
    return tuple(family.unused_modules(run.model, run.data))


def initial_state(config, setup: TrainSetup):
    """The state before any resume: the seed's weights, then ``model.init_checkpoint`` and
    ``model.init_from_runs`` (:func:`crab_jax.checkpoints.converted.initial_weights`). A
    converted checkpoint must hold every frozen weight of the modules the run uses; the frozen
    weights are drawn from the seed only when it lacks some that may start there (a module the
    run never uses, the buffers of a module trained from scratch), never otherwise."""
    run = RunConfig.from_config(config)
    unused = unused_modules(run, setup.family)
    vocab = setup.family.vocab_sizes(setup.model_cfg)
    from_seed = []
    if run.model.init_checkpoint:  # also checks the checkpoint (metadata only) before anything is drawn
        from_seed = frozen_from_seed(run.model.init_checkpoint, setup.abstract.params, setup.abstract.frozen, vocab,
                                     unused)
    if run.model.init_checkpoint and not from_seed:
        state, frozen = setup.init_trainable_fn(), setup.abstract.frozen
    else:
        state = setup.init_fn()
        frozen = state.frozen
    if from_seed:
        log.info("%d frozen array(s) are not in %s and keep the seed's values (modules this run never uses: %s): "
                 "%s", len(from_seed), run.model.init_checkpoint, ", ".join(unused) or "none", ", ".join(from_seed[:8]))
    params, frozen, notes = initial_weights(run.model, setup.abstract, vocab, state.params, frozen, unused=unused)
    for note in notes:
        log.info("%s", note)
    return state.replace(params=params, frozen=frozen)
