"""``python -m crab_jax.data.prepare``: pre-decode AV-UIE into ArrayRecord shards (TFDS, no TF).

Decodes every record of ``data.tasks`` once (frames, fbank, masks, token ids; see
:mod:`crab_jax.data.prepared.array_record` for the schema), so that training reads arrays
instead of decoding video and audio. Train on the result with ``data.prepared=<out>``.
Bad records are skipped and listed in ``<out>/crab_prepare.json`` (and printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import sys
from typing import Sequence

from crab_jax.config.loader import load_config
from crab_jax.families.crab import examples as E
from crab_jax.data.prepared.array_record import META_FILE, make_builder, write_meta
from crab_jax.data.errors import BadRecordError


def settings_of_config(config):
    """(ExampleSettings, CrabConfig) of a run config (model preset + data section)."""
    from crab_jax.families.crab.run_config import crab_config_from

    crab_cfg = crab_config_from(config.model)
    d = config.data
    settings = E.settings_from(crab_cfg, d.get("path", ""), tuple(d.tasks), frame_slots=d.get("frame_slots", 10),
                               audio_slots=d.get("audio_slots", 10))
    return settings, crab_cfg


class _BuildFn:
    """Picklable ``index -> Example | BadRecordError`` for Grain workers."""

    def __init__(self, records, tokenizer, settings):
        self.records, self.tokenizer, self.settings = records, tokenizer, settings

    def __call__(self, i: int):
        try:
            return E.build_example(self.records[i], self.tokenizer, self.settings, int(i))
        except BadRecordError as e:
            return e


def decoded(records, tokenizer, settings, workers: int = 0, progress: bool = True):
    """Yields ``(index, Example | BadRecordError)`` in record order (Grain workers if > 0)."""
    import grain
    from tqdm import tqdm

    from crab_jax.data.pipeline.grain import with_workers

    ds = grain.MapDataset.range(len(records)).map(_BuildFn(records, tokenizer, settings)).to_iter_dataset(
        grain.ReadOptions(num_threads=1 if workers else 4, prefetch_buffer_size=2 if workers else 8))
    for i, x in enumerate(tqdm(with_workers(ds, workers), total=len(records), desc="decoding records",
                               unit="rec", disable=not progress)):
        yield i, x


def prepare(records, tokenizer, settings: E.ExampleSettings, out_dir: str | os.PathLike, *, split: str = "train",
            workers: int = 0, progress: bool = True, initial_bad: Sequence[BadRecordError] = ()) -> dict:
    """Writes the shards + ``crab_prepare.json`` under ``out_dir``; returns ``{written, bad}``."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos, bad = [], [(e.path, e.reason) for e in initial_bad]

    def examples():
        for i, x in decoded(records, tokenizer, settings, workers, progress):
            if isinstance(x, BadRecordError):
                bad.append((x.path, x.reason))
                continue
            infos.append((x.source, E.example_plan_info(x, settings)))
            yield len(infos) - 1, x

    make_builder(out, examples, split).download_and_prepare()
    write_meta(out, settings, split, infos, bad)
    return {"written": len(infos), "bad": bad}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crab_jax.data.prepare",
        description="Decode the AV-UIE records of a run config's data.tasks once (10 video frames or the "
                    "image at the CLIP size, per-segment BEATs fbank, GT masks, token ids) into ArrayRecord "
                    "shards read back through tfds.data_source (TensorFlow not needed). Train on the "
                    "result with --config.data.prepared=OUT.",
        epilog=f"Reads data.path, data.tasks, data.tokenizer, data.frame_slots, data.audio_slots and the model "
               f"preset (query counts, image size, token ids). Writes OUT/crab_av_uie/1.0.0/*.array_record-* "
               f"and OUT/{META_FILE} (settings, plan index, bad records).")
    p.add_argument("--config", required=True, help="run config file, optionally with a variant: configs/gpu.py:finetune")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="train", choices=("train", "test"), help="annotation split (default train)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: threads in this process)")
    p.add_argument("--data-root", default="", help="override data.path")
    p.add_argument("--tokenizer", default="", help="override data.tokenizer (a local tokenizer folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from crab_jax.data.pipeline.grain import check_token_ids, read_records
    from crab_jax.families.crab.prompts import load_tokenizer

    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    settings, crab_cfg = settings_of_config(config)
    root = args.data_root or settings.data_root
    if not root:
        print("error: no data root: set data.path in the config or pass --data-root", file=sys.stderr)
        return 2
    settings = dataclasses.replace(settings, data_root=root)
    tok_path = args.tokenizer or config.data.get("tokenizer", "")
    if not tok_path:
        print("error: no tokenizer: set data.tokenizer in the config or pass --tokenizer", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(tok_path)
    check_token_ids(tokenizer, crab_cfg)
    records, errors = read_records(root, settings.tasks, args.split, seed=int(config.get("seed", 0)))
    result = prepare(records, tokenizer, settings, args.out, split=args.split, workers=args.workers,
                     progress=not args.quiet, initial_bad=errors)
    print(f"wrote {result['written']} examples to {args.out} ({len(result['bad'])} bad records skipped)")
    for path, reason in result["bad"]:
        print(f"  bad: {path}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
