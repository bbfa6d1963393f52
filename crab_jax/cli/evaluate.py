"""``python -m crab_jax.evaluate``: the paper's tables from predictions files.

Reads crab_jax's ``preds.jsonl`` (``python -m crab_jax.infer``) and the original's
``infer_results.jsonl`` / ``inference_results.jsonl`` alike, scores them with the family's
task scorers (:mod:`crab_jax.evaluation.scoring`) and prints one table per task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from crab_jax import families
from crab_jax.evaluation.scoring import format_report, report_json, score_files, tasks_in_files

ALL_TASKS = "all"

METRICS_HELP = """\
metrics (values are fractions in [0, 1]; the paper prints them x100):
  avqa     accuracy of the text in the last <answer>...</answer> against the record's answer,
           overall and per question type (Audio / Visual / Audio-Visual x Counting, Location, ...)
  ave      segment accuracy: equal 1-s slots over 10 x videos (<event> E </event>, <range> s,e </range>)
  avvp     LLP F-scores at segment and event level: Audio, Visual, Audio-Visual, Type@AV
           (mean of the three), Event@AV (audio and visual counts pooled); means over videos
  arig     box IoU of the first two (x,y) points against the GT box: mIoU, cIoU (fraction with
           IoU >= 0.5), AUC (success rate over IoU thresholds 0:0.05:1)
  avcap    BLEU@1-4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) against the record's desc; METEOR runs
           pycocoevalcap's Java jar (needs `java` on PATH; without it METEOR is left out); the
           tokenizer is a Java-free port of the PTB tokenizer
  s4, ms3  J (mask IoU at sigmoid > 0.5) and F (max F-measure, beta^2 = 0.3, over 255 thresholds)
           per frame, averaged over frames (a frame with an empty GT adds F = 0, the original's rule)
  ref-avs  J and F on the seen (test_s) and unseen (test_u) splits; null S on test_n
           (mean sqrt(predicted area / image area), lower is better)
  avss     class-wise mIoU and F over the 71 AVSBench-semantic classes, and the noBg variants
           (which drop the LAST class, the AVSBench quirk)

An answer that cannot be parsed (or a segmentation line without a mask, or one with an
`error`) is scored as wrong and counted unparsable; --skip-unparsable leaves such lines out
instead (the original's scripts skip frames without a generated mask). A line that is not JSON
or lacks the fields its task needs is reported by line number and not scored.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.evaluate", epilog=METRICS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The paper's table of each task from predictions files (crab_jax's preds.jsonl or the "
                    "original's infer_results.jsonl / inference_results.jsonl).")
    p.add_argument("--family", default="crab", choices=families.names(), help="model family (default: crab)")
    p.add_argument("--task", action="append", required=True, metavar="T",
                   help="task to score (repeatable, or 'all': every task of the family that the files hold "
                        "lines for; the original's files do not name their task, so give exactly one for them)")
    p.add_argument("--predictions", action="append", required=True, nargs="+", metavar="FILE",
                   help="predictions JSONL file(s) (repeatable)")
    p.add_argument("--data-root", metavar="DIR",
                   help="folder the lines' relative paths (GT masks ...) are read from; each predictions "
                        "file's folder is searched too (and alone when this is not given)")
    p.add_argument("--json", metavar="OUT", help="also write the tables as JSON to OUT")
    p.add_argument("--skip-unparsable", action="store_true",
                   help="leave unparsable answers / frames without a mask out instead of scoring them as wrong")
    return p


def _fail(message: str) -> int:
    print(f"evaluate: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    family = families.get(args.family)
    known = sorted(family.task_scorers)
    files = [f for group in args.predictions for f in group]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        return _fail(f"predictions file(s) not found: {', '.join(missing)}")
    asked = [t for t in args.task if t != ALL_TASKS]
    if ALL_TASKS in args.task:  # every task of the family that the files hold lines for
        asked += [t for t in tasks_in_files(files) if t in family.task_scorers]
        if not asked:
            return _fail(f"--task all: no line of {', '.join(files)} names a task of family {family.name!r} "
                         f"({', '.join(known)}); an original's file holds one task: name it with --task")
    tasks = list(dict.fromkeys(asked))
    unknown = [t for t in tasks if t not in family.task_scorers]
    if unknown:
        return _fail(f"unknown task(s) {unknown} for family {family.name!r}; known: {known + [ALL_TASKS]}")
    if args.data_root and not os.path.isdir(args.data_root):
        return _fail(f"--data-root {args.data_root} is not a folder")
    report = score_files(family, tasks, files, data_root=args.data_root, skip_unparsable=args.skip_unparsable)
    print(format_report(report, family.headline))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report_json(report), f, indent=2)
    if report.scored == 0:
        print("evaluate: no line could be scored", file=sys.stderr)
        return 1
    return 0
