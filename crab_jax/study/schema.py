"""The ``study`` section of a study config: every key, its default and meaning, and its checks.

A study config file's ``get_config()`` returns a training config (:mod:`crab_jax.config.schema`)
with one more section, ``study`` (:func:`with_study_section` adds it with the defaults below).
The training schema knows nothing of studies: :func:`load_study_config` applies the command's
``--config.KEY=VALUE`` overrides to the whole config (``study.*`` keys and training keys alike),
splits the ``study`` section off, checks the rest against the training schema and this
section against :func:`study_defaults`. Every problem is one line naming the key.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from crab_jax.config.check import ConfigError, check_against_schema, closest_keys, unknown_and_missing
from crab_jax.config.loader import apply_overrides, load_config_file

SECTION = "study"

# The adapter variants a study can train (crab_jax.study.plan turns each into training-config keys).
VARIANTS = ("lora", "lora_budget", "ilora", "floor")
# How many steps a multi-task model trains (crab_jax.study.plan): "compute" = train.num_steps, as
# each single-task model (each of N tasks seen ~1/N as often); "data" = N x train.num_steps (each
# task seen as often as by its single-task model: the papers' setting).
MULTI_STEPS = ("compute", "data")


def study_defaults() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.tasks = ()                    # tasks of the study (single-task models, held-out scores); () = data.tasks
    s.seeds = (0, 1, 2)             # every run is repeated per seed (model init, dropout, data order)
    # Multi-task models, one per variant per seed: lora (plain LoRA, k = 1 at model.lora.r),
    # lora_budget (k = 1 at the I-LoRA rank budget k * r), ilora (model.lora.num_heads heads),
    # floor (no adapter trains: only study.shared_trainable). See crab_jax.study.plan.
    s.variants = VARIANTS
    s.single_variant = "lora"       # the adapter variant of the single-task models
    s.multi_steps = "compute"       # multi-task steps: compute (= train.num_steps) | data (tasks x num_steps)
    s.adapter_trainable = (r"\.lora_(A|B|route)$",)  # regexes of the adapter parameters (trainable)
    # Regexes of the parameters trained in EVERY variant, the floor included: the family's modality
    # projectors (Crab: ^vl_projector\., ^al_projector\.), and whatever else the config must train
    # for the adapters to matter (a tiny random LLM's LM head). The rest of the base LLM and the
    # encoders stay frozen, so the variants differ in their adapters only. () when the recipe
    # trains the adapters only (nothing is shared): the floor is then the untouched base model,
    # scored without training (crab_jax.study.plan).
    s.shared_trainable = ()
    # A transfer is "beyond the seed noise" when |mean paired difference| > noise_se standard errors
    # of the per-seed differences (std / sqrt(seeds)); with one seed it is "n/a".
    s.noise_se = 2.0
    return s


def with_study_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` (a training config, locked or not) with the ``study`` section of defaults added;
    the result is locked like the schema's (a misspelt key in the config file raises at once)."""
    with config.unlocked():
        config[SECTION] = study_defaults()
    config.lock()
    return config


def cpu_study(config: ml_collections.ConfigDict, *, stage: str, tasks: Sequence[str], seeds: Sequence[int],
              steps: int) -> ml_collections.ConfigDict:
    """A small training config made a study on its ``tasks`` and ``seeds``, ``steps`` steps per run:
    one checkpoint at the end of each run (a rerun resumes from it), loss rows every 25 steps, no
    TensorBoard; the ``study`` section added (:func:`with_study_section`). The config file sets the
    rest (held-out size, ``study.shared_trainable``)."""
    config.stage = stage
    config.train.num_steps = int(steps)
    config.data.tasks = tuple(tasks)
    config.checkpoint.every_steps = int(steps)
    config.checkpoint.keep = 1
    config.metrics.log_every = 25
    config.metrics.tensorboard = False
    config = with_study_section(config)
    config.study.tasks = tuple(tasks)
    config.study.seeds = tuple(seeds)
    return config


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The checked ``study`` section (``tasks`` already defaulted to ``data.tasks``)."""

    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    single_variant: str
    multi_steps: str
    adapter_trainable: tuple[str, ...]
    shared_trainable: tuple[str, ...]
    noise_se: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _error(key: str, value, expected: str) -> ConfigError:
    return ConfigError(f"config {SECTION}.{key}={value!r}: {expected}")


def _strings(section: dict, key: str) -> tuple[str, ...]:
    value = section[key]
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise _error(key, value, "expected a tuple of strings, e.g. ('a', 'b')")
    if len(set(value)) != len(value):
        raise _error(key, value, "names a value twice")
    return tuple(value)


def check_study_section(section: dict, training: ml_collections.ConfigDict, *, source: str) -> StudyConfig:
    """The ``study`` mapping checked against :func:`study_defaults` and ``training`` (its data.tasks
    and model.lora); :class:`ConfigError` (one line naming the key) on the first problem."""
    reference = study_defaults().to_dict()
    unknown, missing = unknown_and_missing(section, reference, SECTION + ".")
    if unknown:
        close = closest_keys(unknown[0], {SECTION: reference}, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; the keys of {SECTION} are: {', '.join(sorted(reference))}"
        raise ConfigError(f"{source}: unknown study key {unknown[0]!r}{hint} (declared in crab_jax/study/schema.py)")
    if missing:
        raise ConfigError(f"{source}: missing study key(s) {missing} (declared in crab_jax/study/schema.py)")
    tasks = _strings(section, "tasks") or tuple(training.data.tasks)
    if len(tasks) < 2:
        raise _error("tasks", tasks, "a transfer study needs at least 2 tasks (() takes data.tasks)")
    seeds = section["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise _error("seeds", seeds, "expected distinct non-negative integers, e.g. (0, 1, 2)")
    variants = _strings(section, "variants")
    for key, names in (("variants", variants), ("single_variant", (section["single_variant"],))):
        bad = [v for v in names if v not in VARIANTS]
        if bad or not names:
            raise _error(key, section[key], f"expected variant names among {', '.join(VARIANTS)}")
    if section["multi_steps"] not in MULTI_STEPS:
        raise _error("multi_steps", section["multi_steps"], f"expected one of {', '.join(MULTI_STEPS)}")
    adapters, shared = _strings(section, "adapter_trainable"), _strings(section, "shared_trainable")
    if not adapters:
        raise _error("adapter_trainable", adapters, "empty; expected the adapter parameters' regexes")
    heads = int(training.model.lora.num_heads)
    if heads < 2 and ("ilora" in variants or section["single_variant"] == "ilora"):
        raise ConfigError(f"config model.lora.num_heads={heads}: the ilora variant needs k >= 2 heads")
    noise = section["noise_se"]
    if not isinstance(noise, (int, float)) or noise <= 0:
        raise _error("noise_se", noise, "expected a positive number of standard errors")
    return StudyConfig(tasks, tuple(int(s) for s in seeds), variants, str(section["single_variant"]),
                       str(section["multi_steps"]), adapters, shared, float(noise))


def split_study(config: ml_collections.ConfigDict, *, source: str
                ) -> tuple[ml_collections.ConfigDict, StudyConfig]:
    """A loaded study config -> (the training config, checked against the training schema; the
    checked study section)."""
    if SECTION not in config or not isinstance(config[SECTION], ml_collections.ConfigDict):
        raise ConfigError(f"{source}: no '{SECTION}' section; a study config's get_config() adds one "
                          "(crab_jax.study.schema.with_study_section), see configs/study_tiny.py")
    whole = config.to_dict()
    section = whole.pop(SECTION)
    training = ml_collections.ConfigDict(whole)
    check_against_schema(training, source=source)
    training.lock()
    return training, check_study_section(section, training, source=source)


def load_study_config(spec: str, overrides: Sequence[str] = ()
                      ) -> tuple[ml_collections.ConfigDict, StudyConfig]:
    """``FILE[:VARIANT]`` + ``KEY=VALUE`` overrides (``study.seeds=(0,)``, ``train.num_steps=5``) ->
    :func:`split_study`; :class:`ConfigError` (one line) on any problem."""
    config = load_config_file(spec)
    study_keys = [o for o in overrides if o.partition("=")[0].split(".")[0] == SECTION]
    if SECTION in config:  # a study key the section lacks: the study schema's message, not the training one's
        for item in study_keys:
            key = item.partition("=")[0]
            if not item.partition("=")[1]:
                continue  # apply_overrides names the missing '='
            leaf = key[len(SECTION) + 1:]
            if leaf not in config[SECTION]:
                close = closest_keys(key, {SECTION: study_defaults().to_dict()}, n=1)
                raise ConfigError(f"config override {item!r}: unknown study key {key!r}"
                                  + (f"; did you mean {close[0]}?" if close else "")
                                  + " (declared in crab_jax/study/schema.py)")
    return split_study(apply_overrides(config, overrides), source=f"--config {spec}")
