"""What a run's ``data`` section resolves to (dataset root, tokenizer, vocabulary) and the
iterators built from it, for any model family (passed in, never named).

Sources (``data.source``):

* ``random``: the family's random well-formed batches (``family.batch.random_batches``); no
  files, no tokenizer.
* ``synthetic``: the built-in synthetic audio-visual dataset (:mod:`crab_jax.data.synthetic`).
  On first use it is generated into ``data.path`` (default
  ``<cache>/synthetic/v<F>-seed<S>-train<N>-test<M>-<tasks>``, ``<cache>`` = ``data.cache_dir`` or
  ``~/.cache/crab_jax``; later runs with the same parameters reuse it), in both record layouts
  (AV-UIE, AVUIE_2; the family's ``read_records`` reads its own), and a word-level
  tokenizer is built from every instruction + target text of its records
  (``family.record_texts``; both splits, so no held-out answer word is ``<unk>``) into
  ``<cache>/tokenizers/synthetic-<hash>``, unless ``data.tokenizer`` names a folder.
* ``avuie`` (alias ``grain``): AV-UIE records under ``data.path`` (or the ArrayRecord folder
  ``data.prepared``) with the tokenizer folder ``data.tokenizer`` (LLaMA-2's for the real model).

Records sources go through the Grain pipeline (:mod:`crab_jax.data.pipeline.grain`) with the
family's example builder. Every training iterator has ``bucket_specs()`` (the family's
BatchSpec of each shape it yields: one compile each); the pipeline's also has
``batches_per_epoch``, ``stats()`` and ``get_state()`` / ``set_state()``, the random one the last two.
The model's base vocabulary follows the tokenizer (``DataSetup.base_vocab``) when
``model.base_vocab = -1`` (the family's ``model_config`` applies it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
from typing import Any, Iterator, Sequence

import jax

from crab_jax.config.sections import DataConfig, RunConfig
from crab_jax.data.errors import BadFileError, BadRecordError, UnreadableAnnotationsError
from crab_jax.data.pipeline.grain import make_iterator, make_train_iterator
from crab_jax.data.pipeline.iterator import BatchIterator
from crab_jax.data.pipeline.record_source import RawRecordSource
from crab_jax.data.prepared.array_record import PreparedSource
from crab_jax.data.synthetic.generate import ensure_dataset
from crab_jax.data.synthetic.setup import (heldout_records, synthetic_root, synthetic_tasks, synthetic_tokenizer_dir,
                                           write_tokenizer_once)

log = logging.getLogger("crab_jax.train")

SOURCES = ("random", "synthetic", "avuie", "grain")
RECORD_SOURCES = ("synthetic", "avuie", "grain")


@dataclasses.dataclass
class DataSetup:
    """A resolved ``data`` section.

    Attributes:
      source: ``data.source``.
      root: dataset root (records are read from it), None for ``random`` (and prepared data
        without ``data.path``).
      tokenizer_dir: tokenizer folder, None when there is none.
      tokenizer: the loaded tokenizer (the family's tokens added), or None.
      base_vocab: ids below the family's added tokens (None: keep the preset's).
      cache_dir: where plan indices (and default datasets / tokenizers) are cached.
    """

    source: str
    root: pathlib.Path | None
    tokenizer_dir: pathlib.Path | None
    tokenizer: Any
    base_vocab: int | None
    cache_dir: pathlib.Path


@contextlib.contextmanager
def single_threaded_blas():
    """numpy's BLAS on one thread while the body runs (no-op without ``threadpoolctl``).

    The decoding threads call small matmuls (the fbank's mel projection); a multi-threaded
    BLAS spins its threads on every call and, on a busy 2-core machine, makes a 0.3 ms matmul
    take ~50 ms. Parallelism comes from the pipeline's threads / processes instead. XLA's own
    thread pool is not affected.
    """
    try:
        from threadpoolctl import threadpool_limits  # optional: only limits BLAS threads where installed
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _folder(path: str) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(str(path)))


def prepare_data(data: DataConfig, family, *, progress: bool) -> DataSetup:
    """Resolves (and for ``synthetic`` creates) the dataset and tokenizer of ``data``."""
    if data.source not in SOURCES:
        raise ValueError(f"config data.source={data.source!r}; known: {SOURCES}")
    cache = data.cache_root
    if data.source == "random":
        return DataSetup("random", None, None, None, None, cache)
    if data.source == "synthetic":
        tasks = synthetic_tasks(data)
        root = synthetic_root(data)
        s = data.synthetic
        fresh = not (root / "manifest.json").is_file()
        ensure_dataset(root, int(s.seed), int(s.num_train), int(s.num_test), tasks, progress=progress)
        if fresh:
            log.info("synthetic dataset written to %s", root)
        if data.tokenizer:
            tok_dir = _folder(data.tokenizer)
        else:
            tok_dir, texts = synthetic_tokenizer_dir(root, tasks, cache, family.record_texts, family.read_records)
            write_tokenizer_once(texts, tok_dir, family.added_tokens)
    else:
        if not data.path and not data.prepared:
            raise ValueError(f"config data.source={data.source!r} needs data.path (the AV-UIE root) or data.prepared")
        root = _folder(data.path) if data.path else None
        if not data.tokenizer:
            raise ValueError(f"config data.source={data.source!r} needs data.tokenizer (the tokenizer folder)")
        tok_dir = _folder(data.tokenizer)
    tokenizer = family.load_tokenizer(tok_dir)
    return DataSetup(data.source, root, tok_dir, tokenizer, family.base_vocab_of(tokenizer), cache)


# ----------------------------------------------------------------------------- iterators


def per_process_batch(batch: int, key: str) -> int:
    """``batch`` split over ``jax.process_count()`` processes (an error naming ``key`` if it does not divide)."""
    n = jax.process_count()
    if int(batch) % n:
        raise ValueError(f"config {key}={batch} is not divisible by the {n} processes (hosts)")
    return int(batch) // n


def random_spec(run: RunConfig, family, model_cfg, batch: int):
    """The one BatchSpec of the ``random`` source (records sources have one per bucket)."""
    return family.batch.spec(run.data, model_cfg, int(batch))


def split_file_errors(errors: Sequence[BadRecordError], *, skip: bool, split: str
                      ) -> tuple[list[BadRecordError], list[BadFileError]]:
    """A reader's errors -> (bad entries, annotation files skipped whole).

    A whole file that cannot be read loses its task's records: without ``skip``
    (``data.skip_bad_files``) that is an :class:`UnreadableAnnotationsError` naming every such
    file and where it breaks; with it, each skipped file is logged here and listed in the
    pipeline's ``stats()`` / the end-of-run summary.
    """
    files = [e for e in errors if isinstance(e, BadFileError)]
    if files and not skip:
        raise UnreadableAnnotationsError(
            f"cannot read {len(files)} annotation file(s) of the {split} split (the run would lose their records; "
            "fix them, or set --config.data.skip_bad_files=True to train without them):\n"
            + "\n".join(f"  {e.path}: {e.reason}" + (f" [task {e.task}]" if e.task else "") for e in files))
    for e in files:
        log.warning("annotation file skipped (data.skip_bad_files): %s: %s (%s%s)", e.path, e.reason, e.lost(),
                    f", task {e.task}" if e.task else "")
    return [e for e in errors if not isinstance(e, BadFileError)], files


def train_iterator(run: RunConfig, family, model_cfg, setup: DataSetup, *, progress: bool) -> Iterator[dict]:
    """This process's training batches: ``random`` batches, or the Grain pipeline over the records."""
    data = run.data
    if data.source == "random":
        if int(data.packing.seq_len) > 0:
            raise ValueError(f"config data.packing.seq_len={data.packing.seq_len}: the random source has no records "
                             "to pack; set data.packing.seq_len=0 or a records source (data.source=synthetic|avuie)")
        spec = random_spec(run, family, model_cfg, per_process_batch(run.train.global_batch, "train.global_batch"))
        seed = run.seed * 1000 + jax.process_index()
        return family.batch.random_batches(spec, model_cfg, seed, num_distinct=int(data.num_distinct),
                                           tasks=tuple(data.tasks))
    if data.source not in RECORD_SOURCES:
        raise ValueError(f"config data.source={data.source!r}; known: {SOURCES}")
    builder = family.example_builder(model_cfg, data, setup.root, setup.tokenizer)
    if data.prepared:
        source, errors, skipped = PreparedSource(_folder(data.prepared), builder), [], []
    else:
        if setup.root is None:
            raise ValueError("config data.path: the data root is empty (or set data.prepared)")
        records, errors = family.read_records(setup.root, data.tasks, "train", seed=int(data.seed))
        errors, skipped = split_file_errors(errors, skip=bool(data.skip_bad_files), split="train")
        source = RawRecordSource(records, builder)
    return make_train_iterator(data, source, global_batch=int(run.train.global_batch), initial_bad=errors,
                               skipped_files=skipped, progress=progress)


def gt_as_answer(records: Sequence) -> list:
    """Test records whose only target is the stored GT (``gt``) get it as their ``answer``: the
    example builder tokenizes a target, and generation cuts it off again (the prompt batch)."""
    return [r if r.answer is not None or r.answer_file is not None or r.gt is None
            else dataclasses.replace(r, answer=r.gt) for r in records]


@dataclasses.dataclass
class HeldoutSplit:
    """The held-out split of a run: its records and one pass over them as batches.

    batches: training-format batches of ``run.eval_batch_size`` (this process's rows); its
      ``last_report["records"]`` gives each row's index into ``records`` (-1: filler).
    records: the held-out records.
    by_record: score against the records (AV-UIE: the record fields and GT files) rather than
      the answer text (synthetic data, whose chance levels are defined on the text metrics).
    """

    batches: BatchIterator
    records: list
    by_record: bool


def check_heldout_files(run: RunConfig, family, setup: DataSetup) -> None:
    """At start-up, the held-out (test) split's annotation files are read like the training split's:
    one that cannot be read raises :class:`UnreadableAnnotationsError` naming it now, not when the
    first evaluation runs (maybe hours later), unless ``data.skip_bad_files`` (then it is logged)."""
    if setup.source in ("random", "synthetic") or setup.root is None:
        return
    _, errors = family.read_records(setup.root, tuple(run.data.tasks), "test", seed=int(run.data.seed))
    split_file_errors(errors, skip=bool(run.data.skip_bad_files), split="test")


def heldout_split(run: RunConfig, family, model_cfg, setup: DataSetup) -> HeldoutSplit | None:
    """The run's held-out split (None when there is none: ``random`` data, or no test records)."""
    if setup.source == "random" or setup.root is None:
        return None
    batch = run.eval_batch_size
    per_process_batch(batch, "eval.batch_size")
    tasks = tuple(run.data.tasks)
    if setup.source == "synthetic":
        records = heldout_records(setup.root, tasks, family.read_records, seed=int(run.data.seed))
        errors, skipped = [], []
    else:  # AV-UIE: the test prompts, the stored ground truth as the reference answer
        records, errors = family.read_records(setup.root, tasks, "test", seed=int(run.data.seed))
        # The trainer checked the files at start (check_heldout_files); the same rule applies here.
        errors, skipped = split_file_errors(errors, skip=bool(run.data.skip_bad_files), split="test")
        records = gt_as_answer(records)
    if not records:
        log.warning("no held-out records under %s for tasks %s: evaluation skipped", setup.root, tasks)
        return None
    builder = family.example_builder(model_cfg, run.data, setup.root, setup.tokenizer)
    batches = make_iterator(RawRecordSource(records, builder), global_batch=batch, seq_buckets=run.data.seq_buckets,
                            seed=0, shuffle=False, num_epochs=1, read_threads=int(run.data.read_threads) or None,
                            fallback_fbank_frames=int(run.data.fbank_frames), initial_bad=errors,
                            skipped_files=skipped, max_bad_fraction=1.0, cache_dir=str(setup.cache_dir), progress=False)
    return HeldoutSplit(batches, list(records), by_record=setup.source != "synthetic")
