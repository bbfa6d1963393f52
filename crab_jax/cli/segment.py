"""``python -m crab_jax.segment``: the SAM2 second stage (spec B.6) over a predictions file.

Reads ``preds.jsonl`` (``python -m crab_jax.infer``, or the original's inference lines), turns
each S4 / MS3 / Ref-AVS answer into a SAM 2.1 prompt with the family's rules and writes
``<out>/sam2_predictions.jsonl`` (every input line, in order, with the ``sam2_*`` fields and
``pred_mask_path``) + ``<out>/sam2_masks/*.png`` + ``<out>/sam2_summary.json``
(:mod:`crab_jax.evaluation.sam2_stage`). ``python -m crab_jax.evaluate`` then scores that file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Sequence

from absl import logging as absl_logging

from crab_jax import families
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.readers import read_json_arg
from crab_jax.checkpoints.sam2.weights import config_from_json, load_sam2_model
from crab_jax.evaluation.sam2_stage import MASK_DIR, OUTPUT_FILE, SUMMARY_FILE, run_stage

DEFAULT_FAMILY = "crab_plus"
DEFAULT_BATCH = 8

EPILOG = f"""\
what is written (under --out):
  {OUTPUT_FILE}   every input line in input order; lines of mask tasks gain sam2_valid,
                  sam2_reason, sam2_negative, sam2_box, sam2_points and, when valid,
                  pred_mask_path (relative to --out)
  {MASK_DIR}/     one 224x224 PNG per valid line (0 / 255; all zeros for a Ref-AVS 'false')
  {SUMMARY_FILE}  valid / invalid counts per task and reason (also printed)

rules (Crab+, spec B.6): cut at </s>; [x,y] points and [x1,y1,x2,y2] boxes; S4 / MS3 use the
first box + the last <= 3 points, or the last 3 points; Ref-AVS needs <answer>true</answer> and
a box or a point, <answer>false</answer> is a negative (empty mask); coordinates must lie in the
224x224 frame. The frame is image_path resized to 224x224 with LANCZOS; the mask is SAM 2.1's
logits > 0 (multimask_output=False).

examples:
  python -m crab_jax.segment --predictions runs/s4/preds.jsonl --sam2 sam2.1_hiera_large.pt \\
      --data-root /data/crab_plus --out runs/s4/sam2 --bf16
  python -m crab_jax.segment --predictions preds.jsonl --sam2 ckpt/sam2 --data-root ROOT --out out/
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.segment", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The SAM2 second stage: answers with boxes / points -> SAM 2.1 masks -> a new predictions file.")
    p.add_argument("--predictions", required=True, metavar="FILE", help="predictions JSONL file (preds.jsonl)")
    p.add_argument("--sam2", required=True, metavar="PATH",
                   help="SAM 2.1 weights: the original's sam2.1_hiera_large.pt, an HF Sam2Model folder, or a "
                        "folder converted with `crab-convert-weights --family sam2 to-jax`")
    p.add_argument("--sam2-config", metavar="JSON|DIR", default=None,
                   help="sizes of a .pt other than Hiera-L (an HF config.json / folder / inline JSON); the other "
                        "sources carry their own")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder the lines' relative image_path are read from (default: the predictions file's "
                        "folder); absolute paths are read as they are")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--family", default=DEFAULT_FAMILY, choices=families.names(),
                   help=f"model family whose answer rules apply (default: {DEFAULT_FAMILY})")
    p.add_argument("--bf16", action="store_true",
                   help="matmuls and convolutions in bfloat16 (the original's autocast); default float32")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"frames per SAM2 call (one compile; default {DEFAULT_BATCH})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"segment: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every restore at INFO
    if not os.path.isfile(args.predictions):
        return _fail(f"--predictions {args.predictions}: no such file")
    if args.data_root and not os.path.isdir(args.data_root):
        return _fail(f"--data-root {args.data_root} is not a folder")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}")
    family = families.get(args.family)
    if family.mask_prompts is None:
        return _fail(f"--family {args.family}: this model family has no SAM2 stage")
    try:
        data = read_json_arg(args.sam2_config)
        _, model = load_sam2_model(args.sam2, None if data is None else config_from_json(data))
    except MappingError as e:
        return _fail(f"--sam2 {args.sam2}: {e}")
    except (ValueError, KeyError, FileNotFoundError) as e:
        return _fail(f"--sam2 {args.sam2}: {e}", 1)
    t0 = time.perf_counter()
    try:
        summary = run_stage(family, args.predictions, model, args.out, data_root=args.data_root,
                            batch_size=args.batch_size, bf16=args.bf16, progress=not args.no_progress)
    except ValueError as e:
        return _fail(str(e))
    print(summary.format())
    print(f"wrote {os.path.join(args.out, OUTPUT_FILE)} in {time.perf_counter() - t0:.1f} s")
    return 0
