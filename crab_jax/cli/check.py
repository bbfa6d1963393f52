"""``python -m crab_jax.data.check``: the command around :mod:`crab_jax.data.prepared.check`."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from crab_jax.cli.data_args import add_common_arguments, parse_run
from crab_jax.data.prepared.check import check_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.data.check",
        description="Count the records of a run config's data.tasks per split and report every missing, "
                    "0-byte, undecodable, wrong-rate (not 16 kHz) or too-short media file, with its path. "
                    "Exit status 1 when a problem is found.")
    add_common_arguments(p)
    p.add_argument("--splits", default="train,test", help="comma list of splits (default train,test)")
    p.add_argument("--counts-only", action="store_true", help="count records, do not open media files")
    p.add_argument("--json", default="", help="also write the report as JSON to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, run, family, root = parse_run(build_parser(), argv)
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    builder = family.example_builder(family.model_config(run.model, None), run.data, root, None)
    report = check_dataset(root, run.data.tasks, splits, read_records=family.read_records,
                           min_fbank_frames=builder.min_fbank_frames, decode_media=not args.counts_only,
                           progress=not args.quiet)
    print(report.format())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=1)
    return 1 if report.num_problems else 0

