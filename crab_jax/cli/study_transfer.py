"""``python -m crab_jax.study transfer``: single-task vs multi-task training per adapter variant."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Sequence

from crab_jax.config.check import ConfigError
from crab_jax.config.command_line import USAGE_EXIT, workdir_error

PROG = "python -m crab_jax.study transfer"
OVERRIDE_PREFIX = "--config."

DESCRIPTION = """\
Does multi-task training help or hurt each task, per adapter variant? For the study's tasks
(study.tasks) and seeds (study.seeds), trains one single-task model per task (study.single_variant)
and one multi-task model per variant (study.variants) with the same data and seeds, and the same
steps (study.multi_steps = compute) or each task seen as often as by its single-task model
(study.multi_steps = data: tasks x train.num_steps):

  lora         plain LoRA at the same rank r (model.lora.num_heads = 1)
  lora_budget  plain LoRA at I-LoRA's total rank budget (one head of rank k * r, alpha k * alpha)
  ilora        I-LoRA with k = model.lora.num_heads heads
  floor        frozen base: no adapter trains, only study.shared_trainable (the score adapters
               must beat); with study.shared_trainable = () (a recipe that trains the
               adapters only) the untouched base model, scored without training

The base LLM and encoders stay frozen in every run: the adapters (study.adapter_trainable) and
study.shared_trainable (the projectors) train. Every model is scored on EVERY study task's
held-out set with the task's own headline metric. Writes:

  DIR/runs/<name>/        each run's checkpoints and metrics; result.json when it is done
  DIR/transfer.json       every score per run and seed, the paired transfers, the headline
  DIR/transfer.md         the table: single, multi and transfer = multi - single per task
                          (mean ± std over seeds; * = |mean| > study.noise_se standard errors
                          of the per-seed differences, n/a with one seed) and the headline
                          "positive transfer on X of N tasks (Y%) for I-LoRA vs Z% for LoRA"

Rerunning the same command skips every run with a result.json (an interrupted run resumes from
its checkpoint) and rewrites the table.
"""

EPILOG = """\
overrides: --config.KEY=VALUE sets a training key (--config.train.num_steps=50) or a study key
(--config.study.seeds=(0,1)); values are Python literals.

example:
  python -m crab_jax.study transfer --config configs/study_tiny.py --workdir /tmp/study \\
      --config.study.seeds=(0,)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="FILE[:VARIANT]",
                   help="study config: a training config with a 'study' section (configs/study_tiny.py)")
    p.add_argument("--workdir", required=True, metavar="DIR", help="the study's folder (runs, tables)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return p


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--config.KEY=VALUE`` items (as ``KEY=VALUE``) and the other arguments."""
    overrides, rest = [], []
    for arg in argv:
        if arg.startswith(OVERRIDE_PREFIX):
            overrides.append(arg[len(OVERRIDE_PREFIX):])
        else:
            rest.append(arg)
    return overrides, rest


def fail(message: str) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return USAGE_EXIT


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv)
    args = build_parser().parse_args(rest)
    problem = workdir_error(args.workdir)
    if problem:
        return fail(problem)
    from crab_jax.study.schema import load_study_config  # after --help: the config imports are heavy
    try:
        training, study = load_study_config(args.config, overrides)
    except ConfigError as e:
        return fail(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from crab_jax.study.transfer import run_study  # JAX
    command = " ".join(shlex.quote(a) for a in [*PROG.split(), *argv])
    try:
        table = run_study(training, study, args.workdir, command=command, progress=not args.no_progress)
    except ConfigError as e:
        return fail(str(e))
    print(table["headline_text"])
    print(f"wrote {args.workdir}/transfer.md and transfer.json")
    return 0
