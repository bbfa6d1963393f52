"""Shared pieces of the study tests: each family's tiny study config made miniature."""

from __future__ import annotations

import dataclasses

from crab_jax.study.schema import load_study_config
from tests.train_helpers import REPO

TINY = str(REPO / "configs" / "study_tiny.py")
TASKS = ("avqa", "ave")


@dataclasses.dataclass(frozen=True)
class Miniature:
    """A family's tiny study config made miniature: ``overrides`` beyond the shared ones, and a
    parameter prefix of a frozen encoder (the base must be the same in every run of a seed)."""

    config: str
    overrides: tuple[str, ...]
    encoder: str


MINIATURES = {
    # Crab: its tiny study's shared set (the projectors and the LM head) trains in every run.
    "crab": Miniature(TINY, ("study.variants=('lora',)",), "visual_encoder."),
    # Crab+: the released recipe's shared set (none: adapters only), so the floor is the untouched
    # base, scored without training.
    "crab_plus": Miniature(str(REPO / "configs" / "study_crab_plus_tiny.py"),
                           ("study.variants=('lora','floor')", "study.shared_trainable=()"), "visual."),
}


def miniature(tmp, case: Miniature, *extra: str):
    """``(training, study)`` of ``case``: 2 tasks, 1 seed, 2 steps of 2 samples, 2 held-out clips per
    task, data and caches under ``tmp``; ``extra`` overrides last."""
    return load_study_config(case.config, [
        f"study.tasks={TASKS!r}", "study.seeds=(0,)", *case.overrides,
        "train.num_steps=2", "train.global_batch=2", "train.compilation_cache='none'",
        "data.synthetic.num_train=4", "data.synthetic.num_test=2", f"data.cache_dir={str(tmp / 'cache')!r}",
        "eval.batch_size=4", "eval.max_new_tokens=3", "checkpoint.async_save=False", *extra])
