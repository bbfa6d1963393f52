"""What a run's ``data`` section resolves to before anything is built: dataset root, tokenizer, vocabulary.

Sources (``data.source``):

* ``random``: random well-formed batches (:mod:`crab_jax.families.crab.batch_spec`); no files, no tokenizer.
* ``synthetic``: the built-in synthetic audio-visual dataset (:mod:`crab_jax.data.synthetic.generate`).
  On first use it is generated into ``data.path`` (default
  ``<cache>/synthetic/seed<S>-train<N>-test<M>-<tasks>``, ``<cache>`` = ``data.cache_dir`` or
  ``~/.cache/crab_jax``; later runs with the same parameters reuse it), and a word-level
  tokenizer is built from every prompt + target text of its records (both splits, so no
  held-out answer word is ``<unk>``) into ``<cache>/tokenizers/synthetic-<hash>``, unless
  ``data.tokenizer`` names a folder.
* ``avuie`` (alias ``grain``): AV-UIE records under ``data.path`` with the tokenizer folder
  ``data.tokenizer`` (LLaMA-2's for the real model).

The model's base vocabulary follows the tokenizer (``len(tokenizer) - 17`` Crab tokens) when
``model.base_vocab = -1``, so a tiny Crab always matches the corpus it trains on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import tempfile
from typing import Any, Iterator, Sequence

import jax

from crab_jax.data.synthetic.setup import (cache_dir, heldout_records, synthetic_root, synthetic_tasks,
                                           synthetic_tokenizer_dir, write_tokenizer_once)
from crab_jax.families.crab.batch_spec import BatchSpec, make_random_batches
from crab_jax.families.crab.tokens import base_vocab_of

log = logging.getLogger("crab_jax.train")

SOURCES = ("random", "synthetic", "avuie", "grain")
RECORD_SOURCES = ("synthetic", "avuie", "grain")


@dataclasses.dataclass
class DataSetup:
    """A resolved ``data`` section.

    Attributes:
      source: ``data.source``.
      root: dataset root (records are read from it), None for ``random``.
      tokenizer_dir: tokenizer folder, None when there is none.
      tokenizer: the loaded tokenizer (Crab's tokens added), or None.
      base_vocab: ids below Crab's added tokens (None: keep the preset's).
      cache_dir: where plan indices (and default datasets / tokenizers) are cached.
    """

    source: str
    root: pathlib.Path | None
    tokenizer_dir: pathlib.Path | None
    tokenizer: Any
    base_vocab: int | None
    cache_dir: pathlib.Path


# ----------------------------------------------------------------------------- entry point


@contextlib.contextmanager
def single_threaded_blas():
    """numpy's BLAS on one thread while the body runs (no-op without ``threadpoolctl``).

    The decoding threads call small matmuls (the fbank's mel projection); a multi-threaded
    BLAS spins its threads on every call and, on a busy 2-core machine, makes a 0.3 ms matmul
    take ~50 ms. Parallelism comes from the pipeline's threads / processes instead. XLA's own
    thread pool is not affected.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield



def prepare_data(config, *, progress: bool = True) -> DataSetup:
    """Resolves (and for ``synthetic`` creates) the dataset and tokenizer of ``config.data``."""
    from crab_jax.families.crab.prompts import load_tokenizer

    d = config.data
    if d.source not in SOURCES:
        raise ValueError(f"config data.source={d.source!r}; known: {SOURCES}")
    cache = cache_dir(d)
    if d.source == "random":
        return DataSetup("random", None, None, None, None, cache)
    if d.source == "synthetic":
        from crab_jax.data.synthetic import generate as S

        tasks = synthetic_tasks(d)
        root = synthetic_root(d)
        s = d.synthetic
        fresh = not (root / "manifest.json").is_file()
        S.ensure_dataset(root, int(s.seed), int(s.num_train), int(s.num_test), tasks, progress=progress)
        if fresh:
            log.info("synthetic dataset written to %s", root)
        if d.tokenizer:
            tok_dir = pathlib.Path(os.path.expanduser(str(d.tokenizer)))
        else:
            tok_dir, texts = synthetic_tokenizer_dir(root, tasks, cache)
            write_tokenizer_once(texts, tok_dir)
    else:
        if not d.path and not d.prepared:
            raise ValueError(f"config data.source={d.source!r} needs data.path (the AV-UIE root) or data.prepared")
        root = pathlib.Path(os.path.expanduser(str(d.path))) if d.path else None
        if not d.tokenizer:
            raise ValueError(f"config data.source={d.source!r} needs data.tokenizer (the tokenizer folder)")
        tok_dir = pathlib.Path(os.path.expanduser(str(d.tokenizer)))
    tokenizer = load_tokenizer(tok_dir)
    return DataSetup(d.source, root, tok_dir, tokenizer, base_vocab_of(tokenizer), cache)


def with_base_vocab(crab_cfg, base_vocab: int | None):
    """``crab_cfg`` with ``base_vocab`` text ids before Crab's added tokens (None: unchanged)."""
    from crab_jax.families.crab.tokens import special_token_ids

    if base_vocab is None:
        return crab_cfg
    n_mask = len(crab_cfg.mask_token_ids)
    tokens = special_token_ids(int(base_vocab), n_mask)
    if tokens == dict(crab_cfg.special_token_ids):
        return crab_cfg
    llama = dataclasses.replace(crab_cfg.llama, vocab_size=int(base_vocab) + len(tokens))
    return dataclasses.replace(crab_cfg, llama=llama, special_token_ids=tokens)


# ----------------------------------------------------------------------------- iterators


def batch_spec(config, crab_cfg, per_process_batch: int) -> BatchSpec:
    """The one BatchSpec of the ``random`` source (records sources have one per bucket)."""
    return BatchSpec(batch=per_process_batch, seq_len=int(config.data.seq_len),
                     frame_slots=int(config.data.frame_slots), audio_slots=int(config.data.audio_slots),
                     fbank_frames=int(config.data.fbank_frames), image_size=crab_cfg.clip.vision.image_size)


def make_data_iterator(config, crab_cfg, data: DataSetup, spec: BatchSpec | None = None) -> Iterator[dict]:
    """This process's training batches: ``random`` batches, or the Grain pipeline over the records."""
    if config.data.source == "random":
        spec = spec or batch_spec(config, crab_cfg, int(config.train.global_batch) // jax.process_count())
        seed = config.seed * 1000 + jax.process_index()
        return make_random_batches(spec, crab_cfg, seed, num_distinct=int(config.data.num_distinct),
                                   tasks=tuple(config.data.tasks))
    if config.data.source in RECORD_SOURCES:
        from crab_jax.data.pipeline.grain import make_train_iterator

        data_cfg = config.data.to_dict()
        if data.root is not None:
            data_cfg["path"] = str(data.root)
        data_cfg["cache_dir"] = str(data.cache_dir)
        return make_train_iterator(data_cfg, crab_cfg, global_batch=int(config.train.global_batch),
                                   seed=int(config.data.seed), tokenizer=data.tokenizer,
                                   progress=bool(config.metrics.progress_bar) and jax.process_index() == 0)
    raise ValueError(f"config data.source={config.data.source!r}; known: random, {', '.join(RECORD_SOURCES)}")


def data_specs(config, crab_cfg, data_iter) -> dict[tuple[int, int], BatchSpec]:
    """``(seq_len, fbank_frames) -> BatchSpec`` of every shape the iterator yields (one compile each)."""
    if hasattr(data_iter, "bucket_specs"):
        specs = list(data_iter.bucket_specs())
    else:
        specs = [batch_spec(config, crab_cfg, int(config.train.global_batch) // jax.process_count())]
    return {(s.seq_len, s.fbank_frames): s for s in specs}


def eval_batch_size(config) -> int:
    n = int(config.eval.batch_size) or int(config.train.global_batch)
    if n % jax.process_count():
        raise ValueError(f"config eval.batch_size={n} is not divisible by the {jax.process_count()} processes")
    return n


def heldout_iterator(config, crab_cfg, data: DataSetup):
    """One pass over the held-out split as training-format batches (None when there is none)."""
    from crab_jax.families.crab import examples as E
    from crab_jax.data.pipeline import grain as G
    from crab_jax.data.pipeline.buckets import CollateConfig

    if data.source == "random" or data.root is None:
        return None
    tasks = tuple(config.data.tasks)
    if data.source == "synthetic":
        records, errors = heldout_records(data.root, tasks, seed=int(config.data.seed)), []
    else:  # AV-UIE: the test prompts, the stored ground truth as the reference answer
        records, errors = G.read_records(data.root, tasks, "test", seed=int(config.data.seed))
        records = [r if r.answer is not None or r.answer_file is not None or r.gt is None
                   else dataclasses.replace(r, answer=r.gt) for r in records]
    if not records:
        log.warning("no held-out records under %s for tasks %s: evaluation skipped", data.root, tasks)
        return None
    settings = E.settings_from(crab_cfg, data.root, tasks, frame_slots=int(config.data.frame_slots),
                               audio_slots=int(config.data.audio_slots))
    buckets = tuple(config.data.buckets) or (int(config.data.seq_len),)
    return G.make_iterator(G.RawRecordSource(records, data.tokenizer, settings), settings,
                           CollateConfig.from_crab(crab_cfg), global_batch=eval_batch_size(config),
                           seq_buckets=buckets, seed=0, shuffle=False, num_epochs=1,
                           read_threads=int(config.data.read_threads) or None,
                           fallback_fbank_frames=int(config.data.fbank_frames), initial_bad=errors,
                           max_bad_fraction=1.0, cache_dir=str(data.cache_dir), progress=False)
