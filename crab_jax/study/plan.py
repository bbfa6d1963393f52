"""A transfer study's config -> the list of training runs it needs (pure; nothing runs here).

Per seed (``study.seeds``): one single-task model per study task with the study's
``single_variant`` (``single-<variant>-<task>-s<seed>``), then one multi-task model on every
study task per variant in ``study.variants`` (``multi-<variant>-s<seed>``). Every run keeps the
training config's batch, optimizer and data (a task's records are the same in every run) and
differs only in the keys :func:`run_overrides` sets: its tasks, the seed, the adapter and, for a
multi-task model with ``study.multi_steps = "data"``, its steps (tasks x ``train.num_steps``, so
each task is seen as often as by its single-task model; ``"compute"``: the same steps as each
single-task model).

Variants (``k`` = ``model.lora.num_heads``, ``r`` = ``model.lora.r``, ``alpha`` = ``model.lora.alpha``):

  lora         plain LoRA at the same r: one head (k = 1: the router's softmax over one head is 1).
  lora_budget  plain LoRA at I-LoRA's total rank budget: one head of rank r' = k * r (I-LoRA's k
               heads of rank r, summed), alpha' = k * alpha so the scale alpha / r is unchanged.
  ilora        I-LoRA: k heads of rank r mixed by the per-token router.
  floor        no adapter trains (LoRA B stays at its zero init, so the LLM is the frozen base):
               only the shared set (the projectors); the score an adapter has to beat. With an
               empty shared set (a recipe that trains the adapters only) nothing would train:
               the floor is the untouched base model, scored without training
               (:attr:`PlannedRun.trains` False; its ``trainable`` keys name the adapters only
               so that the model can be built: their B is zero, so they add nothing).

In every variant the base LLM and the encoders are frozen: the trainable set is the adapter
regexes (``study.adapter_trainable``, not for ``floor``) plus the shared set trained in every
variant (``study.shared_trainable``: the projectors). The frozen weights come from the seed alone (each I-LoRA layer
draws the same number of keys whatever its k and r), so every run of a seed starts from the
same base model, encoders and projectors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from crab_jax.study.schema import StudyConfig

SINGLE, MULTI = "single", "multi"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One training run of a study.

    name: stable folder name under ``DIR/runs/`` (``single-lora-avqa-s0``, ``multi-ilora-s1``).
    kind: ``single`` (trained on one task) or ``multi`` (on every study task).
    tasks: the tasks it trains on (its ``data.tasks``).
    variant: the adapter variant (:data:`crab_jax.study.schema.VARIANTS`).
    seed: its ``seed`` and ``data.seed``.
    overrides: dotted training-config keys -> values that make the run out of the study's config.
    trains: False for a floor with nothing trainable (``study.shared_trainable`` empty): the
      model is scored as the config builds it, no step runs.
    """

    name: str
    kind: str
    tasks: tuple[str, ...]
    variant: str
    seed: int
    overrides: Mapping[str, Any]
    trains: bool = True


def trains(variant: str, study: StudyConfig) -> bool:
    """Whether a run of ``variant`` has anything to train (the floor without a shared set has not)."""
    return variant != "floor" or bool(study.shared_trainable)


def adapter_overrides(variant: str, lora: Mapping[str, Any], study: StudyConfig) -> dict[str, Any]:
    """The ``model.lora.*`` and ``trainable`` keys of ``variant`` (``lora``: the training config's
    ``model.lora`` section as a mapping with ``r``, ``alpha``, ``num_heads``)."""
    r, alpha, k = int(lora["r"]), float(lora["alpha"]), int(lora["num_heads"])
    heads, rank, scale_alpha = {
        "lora": (1, r, alpha),
        "lora_budget": (1, k * r, k * alpha),
        "ilora": (k, r, alpha),
        "floor": (1, r, alpha),
    }[variant]
    # An untrained floor names the adapters: a model needs a trainable set to be built, and their
    # zero B leaves the base model untouched (nothing steps).
    adapters = () if variant == "floor" and trains(variant, study) else tuple(study.adapter_trainable)
    return {"model.lora.num_heads": heads, "model.lora.r": rank, "model.lora.alpha": scale_alpha,
            "trainable": adapters + tuple(study.shared_trainable)}


def run_overrides(tasks: tuple[str, ...], variant: str, seed: int, lora: Mapping[str, Any],
                  study: StudyConfig, *, steps: int | None = None) -> dict[str, Any]:
    """The training-config keys of one run (``steps``: its ``train.num_steps`` when not the config's)."""
    out = {"data.tasks": tuple(tasks), "seed": int(seed), "data.seed": int(seed),
           **adapter_overrides(variant, lora, study)}
    if steps is not None:
        out["train.num_steps"] = int(steps)
    return out


def single_name(variant: str, task: str, seed: int) -> str:
    return f"{SINGLE}-{variant}-{task}-s{seed}"


def multi_name(variant: str, seed: int) -> str:
    return f"{MULTI}-{variant}-s{seed}"


def plan_runs(training: Mapping[str, Any], study: StudyConfig) -> list[PlannedRun]:
    """Every run of the study (``training``: the study's training config, a ConfigDict or dict),
    seed by seed (a finished seed gives a complete one-seed table)."""
    lora = training["model"]["lora"]
    multi_steps = len(study.tasks) * int(training["train"]["num_steps"]) if study.multi_steps == "data" else None
    runs = []
    for seed in study.seeds:
        for task in study.tasks:
            runs.append(PlannedRun(single_name(study.single_variant, task, seed), SINGLE, (task,),
                                   study.single_variant, seed,
                                   run_overrides((task,), study.single_variant, seed, lora, study),
                                   trains=trains(study.single_variant, study)))
        for variant in study.variants:
            runs.append(PlannedRun(multi_name(variant, seed), MULTI, tuple(study.tasks), variant, seed,
                                   run_overrides(tuple(study.tasks), variant, seed, lora, study,
                                                 steps=multi_steps), trains=trains(variant, study)))
    return runs
