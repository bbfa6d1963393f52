"""``python -m crab_jax.data.prepare``: the command around :mod:`crab_jax.data.prepared.prepare`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from crab_jax.cli.data_args import add_common_arguments, parse_run
from crab_jax.config.command_line import fail
from crab_jax.data.errors import UnreadableAnnotationsError
from crab_jax.data.prepared.array_record import META_FILE
from crab_jax.data.prepared.prepare import prepare
from crab_jax.data.sources import split_file_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.data.prepare",
        description="Decode the records of a run config's data.tasks once, with the model family's example "
                    "builder (Crab: 10 video frames or the image at the CLIP size, per-segment BEATs fbank, GT "
                    "masks, token ids), into ArrayRecord shards read back through tfds.data_source "
                    "(TensorFlow not needed). Train on the result with --config.data.prepared=OUT.",
        epilog=f"Reads model.family, data.path, data.tasks, data.tokenizer, data.frame_slots, data.audio_slots and "
               f"the model preset (query counts, image size, token ids). Writes OUT/<dataset>/1.0.0/"
               f"*.array_record-* and OUT/{META_FILE} (settings, plan index, bad records).")
    add_common_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="train", choices=("train", "test"), help="annotation split (default train)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: threads in this process)")
    p.add_argument("--tokenizer", default="", help="override data.tokenizer (a local tokenizer folder)")
    return p


def records_or_exit(family, root, run, split: str) -> tuple[list, list]:
    """The split's records and bad-entry errors; an annotation file that cannot be read whole (it
    would silently lose its task's records from the prepared data) is refused in one line on stderr,
    exit status 2, unless ``data.skip_bad_files`` (then it is logged and left out)."""
    records, errors = family.read_records(root, run.data.tasks, split, seed=int(run.data.seed))
    try:
        errors, _ = split_file_errors(errors, skip=bool(run.data.skip_bad_files), split=split)
    except UnreadableAnnotationsError as e:
        fail(str(e))
    return records, errors


def main(argv: Sequence[str] | None = None) -> int:
    args, run, family, root = parse_run(build_parser(), argv)
    records, errors = records_or_exit(family, root, run, args.split)  # before the tokenizer: fail fast
    tok_path = args.tokenizer or run.data.tokenizer
    if not tok_path:
        print("error: no tokenizer: set data.tokenizer in the config or pass --tokenizer", file=sys.stderr)
        return 2
    tokenizer = family.load_tokenizer(os.path.expanduser(tok_path))
    # The stored token ids must be those of the model that trains on them: its vocabulary
    # follows the tokenizer as in training (model.base_vocab = -1).
    model_cfg = family.model_config(run.model, family.base_vocab_of(tokenizer))
    builder = family.example_builder(model_cfg, run.data, root, tokenizer)
    result = prepare(records, builder, args.out, split=args.split, workers=args.workers,
                     progress=not args.quiet, initial_bad=errors)
    print(f"wrote {result['written']} examples to {args.out} ({len(result['bad'])} bad records skipped)")
    for path, reason in result["bad"]:
        print(f"  bad: {path}: {reason}")
    return 0


