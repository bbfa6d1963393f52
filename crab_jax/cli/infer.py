"""``python -m crab_jax.infer``: generate with a trained Crab and score the answers.

Two modes:

* held-out (``--config FILE --workdir DIR``): the run's held-out batches, generated and
  scored per task; the library is :mod:`crab_jax.evaluation.generation`, this module is the
  command around it (config file + overrides, weights of a run's workdir, output file);
* quick start (``--weights W --input samples.json --media-root DIR --output preds.jsonl``, or
  ``--weights W --data-root ROOT --tasks T,... --output preds.jsonl``): converted weights on
  the original's quick-start samples or a dataset's test records (:mod:`crab_jax.cli.quick_start`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Sequence

from absl import logging as absl_logging

from crab_jax.cli import quick_start
from crab_jax.cli.workdir_model import load_model
from crab_jax.config.check import ConfigError
from crab_jax.config.command_line import fail
from crab_jax.config.loader import load_config
from crab_jax.config.sections import RunConfig
from crab_jax.data.sources import DataSetup, heldout_split, prepare_data, train_iterator
from crab_jax.evaluation.generation import evaluate
from crab_jax.evaluation.heldout import max_new_tokens
from crab_jax.families.base import Family
from crab_jax.io.paths import as_path
from crab_jax.models.decoding import DecodeConfig
from crab_jax.training.setup import resolve

log = logging.getLogger("crab_jax.infer")


# Seed offset of the random held-out batches: a stream the trainer (seed * 1000 + process) never uses.
RANDOM_HELDOUT_SEED = 999_983


def eval_batches(run: RunConfig, family: Family, model_cfg, data: DataSetup, split: str):
    """``(batches, records)``: training-format batches to generate for, and the records to score
    them against (None: score against the answer text).

    ``test``: the trainer's held-out split (:func:`crab_jax.data.sources.heldout_split`;
    for ``random`` data, random batches of a seed the trainer never uses). ``train``: the
    training iterator itself (what the run saw; with ``random`` + ``num_distinct`` it memorises).
    """
    if split == "train":
        return train_iterator(run, family, model_cfg, data, progress=False), None
    if run.data.source == "random":
        spec = family.batch.spec(run.data, model_cfg, run.eval_batch_size)
        return family.batch.random_batches(spec, model_cfg, run.seed * 1000 + RANDOM_HELDOUT_SEED,
                                           tasks=tuple(run.data.tasks)), None
    held = heldout_split(run, family, model_cfg, data)
    if held is None:
        raise ValueError(f"config data.source={run.data.source!r}: no held-out records for tasks "
                         f"{tuple(run.data.tasks)} under {data.root}")
    return held.batches, (held.records if held.by_record else None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.infer",
        description="Generate answers (and masks) with a trained Crab on held-out batches and score them "
                    "per task (exact match; AVQA accuracy, AVE segment accuracy, ARIG box IoU, S4 mask IoU "
                    "and category accuracy from the task parsers), next to each metric's chance level.",
        epilog="Quick start on converted weights: python -m crab_jax.infer --weights W --input samples.json "
               "--media-root DIR --output preds.jsonl, or on a dataset's test records: --weights W --data-root ROOT "
               "--tasks T,... --output preds.jsonl (python -m crab_jax.infer --weights W --help for its flags).")
    p.add_argument("--config", required=True,
                   help="the training config file, FILE or FILE:VARIANT "
                        "(e.g. configs/tiny.py, configs/tpu_v4.py:finetune)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set data.seq_len=64; the trainer's "
                        "spelling --config.data.seq_len=64 works too")
    p.add_argument("--workdir", required=True, help="the training run folder: weights come from WORKDIR/checkpoints")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="held-out records / random batches the trainer never saw (test), or the training ones")
    p.add_argument("--batch-size", type=int, default=0,
                   help="samples per generation batch (0: eval.batch_size, else train.global_batch)")
    p.add_argument("--max-batches", type=int, default=4, help="batches to generate for (0: the whole split)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="generated tokens per sample (0: the config's eval.max_new_tokens, else the family's "
                        "largest over data.tasks; Crab: 500 text, 100 AVS)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus mass (1 = all)")
    p.add_argument("--eos-id", type=int, default=-1, help="end-of-sequence id (-1: the tokenizer's, else the model's pad id)")
    p.add_argument("--tokenizer", default="",
                   help="HF tokenizer folder for detokenisation (default: the run's data.tokenizer / the "
                        "synthetic word tokenizer; random data has none)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--output", default="", help="write one JSON line per sample (text, reference, scores) here")
    p.add_argument("--no-chance", action="store_true",
                   help="skip the chance levels (only reported for data.source=synthetic, "
                        "whose distribution they assume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None):
    """The parsed flags; ``--config.KEY=VALUE`` (as for ``crab_jax.train``) become ``--set KEY=VALUE``."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not (a.startswith("--config.") and "=" in a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.set = list(args.set) + [a[len("--config."):] for a in extra]
    return args


def is_quick_start(argv: Sequence[str]) -> bool:
    """The quick-start mode is chosen by ``--weights``."""
    return any(a == "--weights" or a.startswith("--weights=") for a in argv)


def checked_config(args):
    """The config file + overrides, schema-checked, and the run's workdir looked at, before any JAX
    work; a problem (unknown key, wrong type, missing config file, no such workdir) is one line on
    stderr and exit status 2, as for ``crab_jax.train``."""
    try:
        config = load_config(args.config, args.set)
    except ConfigError as e:
        fail(str(e))
    workdir = as_path(args.workdir)
    if not workdir.is_dir():
        fail(f"--workdir {args.workdir}: {'not a folder' if workdir.exists() else 'no such folder'} (the "
             "training run's folder, holding checkpoints/; pass the --workdir the run was trained in)")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if is_quick_start(argv):
        return quick_start.main(argv)
    args = parse_args(argv)
    config = checked_config(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every restore at INFO
    if args.batch_size:
        config.eval.batch_size = args.batch_size
        config.train.global_batch = args.batch_size
    run, family = resolve(config)
    workdir = as_path(args.workdir)
    data = prepare_data(run.data, family, progress=not args.no_progress)
    tokenizer = family.load_tokenizer(args.tokenizer) if args.tokenizer else data.tokenizer
    setup, model = load_model(run, family, workdir, data)
    model_cfg = setup.model_cfg
    pad = family.pad_token_id(model_cfg)
    eos = args.eos_id if args.eos_id >= 0 else (tokenizer.eos_token_id if tokenizer is not None else pad)
    new_tokens = args.max_new_tokens or max_new_tokens(run, family)
    dcfg = DecodeConfig(max_new_tokens=new_tokens, eos_token_id=int(eos), pad_token_id=int(pad),
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    batches, records = eval_batches(run, family, model_cfg, data, args.split)
    samples: list = []
    t0 = time.perf_counter()
    with_chance = not args.no_chance and run.data.source == "synthetic"
    results = evaluate(family, model, model_cfg, batches, tokenizer, tuple(run.data.tasks), dcfg=dcfg,
                       rng_seed=args.seed, with_chance=with_chance, max_batches=args.max_batches or None,
                       progress=not args.no_progress, records_out=samples, mesh=setup.mesh, records=records,
                       data_root=None if data.root is None else str(data.root))
    dt = time.perf_counter() - t0
    if args.output:
        with open(args.output, "w") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")
    print(f"{len(samples)} samples in {dt:.1f} s ({args.split} split, max_new_tokens={new_tokens})")
    for key, entry in results.items():
        chance = f"  chance {entry['chance']:.3f}" if "chance" in entry else ""
        print(f"{key:32s} {entry['mean']:.3f}  (n={entry['n']}){chance}")
    return 0
