"""The quick start for any family: requests (records) -> generated answers and masks -> ``preds.jsonl``.

Every record goes through the family's example builder and collation, so prompts and media
are exactly the training pipeline's. Then:

1. Records are grouped by their generation budget (``--max-new-tokens``, else
   ``family.default_max_new_tokens(task)``: Crab's 500 for text tasks, 100 for segmentation);
   each group has one :class:`~crab_jax.models.decoding.DecodeConfig`.
2. Within a group, decoded examples wait in length buckets (expanded length rounded up to
   ``length_multiple``; the batch's :class:`Bucket` takes its examples' longest fbank / media
   sizes, which the models mask exactly); a full bucket
   of ``batch_size`` is left-padded into one batch, cut to its prompts
   (``family.batch.prompt_batch``: a dataset record carries its reference as the target,
   a quick-start request has none) and generated (``family.generate``, compiled once per
   bucket shape and budget); a bucket's last partial batch is completed with filler rows
   (copies of its examples; their outputs are dropped).
3. Each sample becomes one line (:mod:`crab_jax.evaluation.prediction_lines`), written in
   input order and flushed as soon as the lines before it are done; masks are written as
   files (:mod:`crab_jax.evaluation.mask_files`).

Batches are left-padded and **the pads are masked** (attention mask 0, positions counted
from each sample's first real token), so a sample's answer does not depend on the batch it
is in. The original differs at batch > 1: its ``generate`` builds an all-ones attention
mask, so its left pads are attended to (``inference_hyper_lora.py`` runs the text tasks at
batch 8); at batch 1, as ``scripts/quick_start.py`` runs, the two agree.

A record whose media is missing or cannot be decoded (:class:`BadRecordError` from the
builder) fails alone: its line carries ``error`` and no ``predict``; the others complete.
An entry the dataset reader could not turn into a record (``read_errors``: its task and the
reader's error) gets a line too, after the records' lines: ``task``, ``source`` (the
annotation file and entry) and ``error``, so a predictions file accounts for every entry.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media.decode import load_image
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.data.records.record import resolve
from crab_jax.evaluation import mask_files
from crab_jax.evaluation.prediction_lines import OrderedJsonLines, error_line, prediction_line, record_metadata
from crab_jax.families.base import Family
from crab_jax.models.decoding import DecodeConfig

log = logging.getLogger("crab_jax.infer")

DEFAULT_LENGTH_MULTIPLE = 64  # expanded prompt lengths are rounded up to this: one compile per bucket


@dataclasses.dataclass(frozen=True)
class QuickStartOptions:
    """How to generate.

    batch_size: samples per generation batch.
    max_new_tokens: generated tokens per sample; 0 = the family's budget of each task.
    temperature / top_k / top_p: sampling (temperature 0 = greedy, the original's default).
    seed: sampling seed (batch ``k`` uses ``fold_in(key(seed), k)``).
    length_multiple: prompt lengths are bucketed to multiples of this.
    padding: side the prompts of a batch are padded on: ``"left"`` (every row generates as it
      would alone) or ``"right"`` (the original Crab+'s test collator, to reproduce its numbers:
      a shorter row generates after its pads; ``family.batch.prompt_batch`` refuses it where the
      family's original never did it).
    progress: show a progress bar (samples/s).
    """

    batch_size: int = 1
    max_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    length_multiple: int = DEFAULT_LENGTH_MULTIPLE
    padding: str = "left"
    progress: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 0:
            raise ValueError(f"--max-new-tokens must be >= 0 (0: the task's default), got {self.max_new_tokens}")
        if self.padding not in ("left", "right"):
            raise ValueError(f"padding must be 'left' or 'right', got {self.padding!r}")
        if self.length_multiple < 1:
            raise ValueError(f"length_multiple must be >= 1, got {self.length_multiple}")


@dataclasses.dataclass
class QuickStartResult:
    """What a run did: items written with a prediction, items whose media failed, reader
    errors written as lines (``unreadable``), seconds spent."""

    done: int = 0
    failed: int = 0
    unreadable: int = 0
    seconds: float = 0.0


def budget_of(family: Family, task: str, options: QuickStartOptions) -> int:
    """Generated tokens for ``task``: ``options.max_new_tokens``, else the family's default."""
    if options.max_new_tokens:
        return int(options.max_new_tokens)
    if family.default_max_new_tokens is None:
        raise ValueError(f"model family {family.name!r} has no default generation budget: pass --max-new-tokens")
    return int(family.default_max_new_tokens(task))


def seq_bucket(builder, example, length_multiple: int) -> int:
    """The example's token length rounded up to ``length_multiple``: examples of one such length
    are batched together."""
    info = builder.example_plan_info(example)
    return -(-int(info.expanded_len) // length_multiple) * length_multiple


def bucket_of(builder, examples: Sequence, seq_len: int) -> Bucket:
    """The batch shape of ``examples``: ``seq_len`` tokens, their longest fbank / media sizes
    (audio-free: the builder's shortest segment, so every batch has a valid audio buffer)."""
    infos = [builder.example_plan_info(ex) for ex in examples]
    return Bucket(int(seq_len), max(int(i.fbank_frames) for i in infos) or int(builder.min_fbank_frames),
                  max(int(i.media_slots) for i in infos))


def decode_config(eos: int, pad: int, budget: int, options: QuickStartOptions) -> DecodeConfig:
    return DecodeConfig(max_new_tokens=budget, eos_token_id=int(eos), pad_token_id=int(pad),
                        temperature=options.temperature, top_k=options.top_k, top_p=options.top_p)


def collate_padded(builder, examples: Sequence, bucket: Bucket, batch_size: int) -> dict:
    """``examples`` (at most ``batch_size``) + filler rows -> one batch of ``batch_size`` rows."""
    fillers = [builder.filler(examples[i % len(examples)]) for i in range(batch_size - len(examples))]
    return builder.collate(list(examples) + fillers, bucket)


class _Run:
    """One quick-start run's state: pending buckets, the writer, counters."""

    def __init__(self, family, model, model_cfg, builder, tokenizer, media_root, masks_dir, output_dir,
                 writer, options, bar):
        self.family, self.model, self.model_cfg = family, model, model_cfg
        self.builder, self.tokenizer = builder, tokenizer
        self.media_root, self.masks_dir, self.output_dir = media_root, masks_dir, output_dir
        self.writer, self.options, self.bar = writer, options, bar
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else family.pad_token_id(model_cfg)
        self.pad = family.pad_token_id(model_cfg)
        self.result = QuickStartResult()
        self.batches = 0

    def fail(self, index: int, record, error: BadRecordError) -> None:
        log.warning("item %d (%s): %s: %s", index, record.source, error.path, error.reason)
        self.writer.add(index, error_line(record_metadata(self.family, record), error))
        self.result.failed += 1
        self.bar.update(1)

    def generate(self, items: list, seq_len: int, dcfg: DecodeConfig) -> None:
        """``items`` = ``[(index, record, example)]`` of one token length -> their lines."""
        examples = [ex for _, _, ex in items]
        batch = collate_padded(self.builder, examples, bucket_of(self.builder, examples, seq_len),
                               self.options.batch_size)
        rng = jax.random.fold_in(jax.random.key(self.options.seed), self.batches)
        self.batches += 1
        prompt = self.family.batch.prompt_batch(batch, self.model_cfg, padding=self.options.padding).batch
        generation = self.family.generate(self.model, prompt, dcfg, rng)
        records = [rec for _, rec, _ in items]
        for (index, record, _), pred in zip(items, self.family.predictions(generation, records, self.tokenizer)):
            paths = self.write_masks(index, record, pred)
            self.writer.add(index, prediction_line(record_metadata(self.family, record), pred, paths))
            self.result.done += 1
        self.bar.update(len(items))

    def write_masks(self, index: int, record, pred) -> dict[str, str]:
        if pred.mask_logits is None and pred.mask_classes is None:
            return {}
        mask = pred.mask_logits if pred.mask_logits is not None else pred.mask_classes
        frame = None
        if record.image_path:  # the overlay's frame: the image the model saw, at the mask's size
            try:
                frame = load_image(resolve(self.media_root, record.image_path), int(np.shape(mask)[-1]))
            except BadRecordError:
                frame = None
        paths = mask_files.write_mask_files(self.masks_dir, f"{index:05d}_{record.task}", logits=pred.mask_logits,
                                            classes=pred.mask_classes, frame=frame)
        return {k: self.shown(p) for k, p in paths.items()}

    def shown(self, path: str) -> str:
        """A mask path as the line holds it: relative to the predictions file's folder when below it."""
        rel = os.path.relpath(path, self.output_dir)
        return path if rel.startswith("..") else rel


def read_error_line(task: str, error: BadRecordError) -> dict[str, str]:
    """The line of an entry the reader rejected (no record: only its task and where it is)."""
    return {"task": task, "source": error.path, "error": f"{error.path}: {error.reason}"}


def run_quick_start(family: Family, model, model_cfg, builder, tokenizer, records: Sequence, *,
                    media_root: str, output: str, masks_dir: str | None = None,
                    options: QuickStartOptions = QuickStartOptions(),
                    read_errors: Sequence[tuple[str, BadRecordError]] = ()) -> QuickStartResult:
    """Generates for every record and writes ``output`` (one line per record, input order,
    then one per ``read_errors`` entry).

    ``builder``: ``family.example_builder(model_cfg, data, media_root, tokenizer)``;
    ``masks_dir``: where mask files go (default: ``<output folder>/masks``);
    ``read_errors``: ``(task, error)`` of the entries the dataset reader rejected.
    """
    output_dir = os.path.dirname(os.path.abspath(output))
    masks_dir = os.path.abspath(masks_dir) if masks_dir else os.path.join(output_dir, "masks")
    groups: dict[int, list] = collections.defaultdict(list)
    for index, record in enumerate(records):
        groups[budget_of(family, record.task, options)].append((index, record))
    t0 = time.perf_counter()
    bar = tqdm(total=len(records), desc="quick start", unit="sample", disable=not options.progress)
    with OrderedJsonLines(output) as writer:
        run = _Run(family, model, model_cfg, builder, tokenizer, media_root, masks_dir, output_dir, writer,
                   options, bar)
        for budget, items in groups.items():
            dcfg = decode_config(run.eos, run.pad, budget, options)
            pending: dict[int, list] = collections.defaultdict(list)
            for index, record in items:
                try:
                    example = builder.build(record, index)
                except BadRecordError as e:
                    run.fail(index, record, e)
                    continue
                seq = seq_bucket(builder, example, options.length_multiple)
                pending[seq].append((index, record, example))
                if len(pending[seq]) == options.batch_size:
                    run.generate(pending.pop(seq), seq, dcfg)
            for seq in sorted(pending):
                run.generate(pending[seq], seq, dcfg)
        for offset, (task, error) in enumerate(read_errors):
            writer.add(len(records) + offset, read_error_line(task, error))
            run.result.unreadable += 1
    bar.close()
    run.result.seconds = time.perf_counter() - t0
    return run.result
