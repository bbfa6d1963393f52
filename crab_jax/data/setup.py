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
from typing import Any, Sequence

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


def cache_dir(data_cfg) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(str(data_cfg.cache_dir or "~/.cache/crab_jax")))


def synthetic_tasks(data_cfg) -> tuple[str, ...]:
    """``data.tasks`` checked against the synthetic generator's tasks."""
    from crab_jax.data.synthetic import generate as S

    tasks = tuple(data_cfg.tasks)
    bad = [t for t in tasks if t not in S.TASKS]
    if bad or not tasks:
        raise ValueError(f"config data.tasks={list(tasks)}: data.source='synthetic' generates only {list(S.TASKS)}")
    return tasks


def synthetic_root(data_cfg) -> pathlib.Path:
    """``data.path``, or the default folder named after the generation parameters."""
    if data_cfg.path:
        return pathlib.Path(os.path.expanduser(str(data_cfg.path)))
    s = data_cfg.synthetic
    name = f"seed{int(s.seed)}-train{int(s.num_train)}-test{int(s.num_test)}-{'_'.join(synthetic_tasks(data_cfg))}"
    return cache_dir(data_cfg) / "synthetic" / name


# ----------------------------------------------------------------------------- held-out records


def as_training_record(record):
    """A test-split record in training form: the training prompt and the training target text.

    The tiny model learns the training prompts; held-out scoring asks the same questions about
    unseen clips. Targets: AVQA / AVE get their ``converted_label`` text (what training reads),
    S4 / ARIG keep the test ground truth (its text parses to the same fields).
    """
    from crab_jax.data.synthetic import generate as S

    f = record.fields
    if record.task == "avqa":
        answer = S.avqa_label_text(record.gt)
    elif record.task == "ave":
        answer = S.ave_label_text(f["event"], f["start_time"], f["end_time"])
    else:
        answer = record.gt
    return dataclasses.replace(record, mode="train", answer=answer, answer_file=None, gt=None)


def heldout_records(root: str | os.PathLike, tasks: Sequence[str], *, seed: int = 0) -> list:
    """The test split's records in training form (:func:`as_training_record`); S4 / MS3 keep
    frame 0 only, the frame their training records show."""
    from crab_jax.data.pipeline.grain import read_records

    records, errors = read_records(root, tasks, "test", seed=seed)
    if errors:
        log.warning("held-out split: %d bad annotation entries skipped (first: %s)", len(errors), errors[0])
    keep = [r for r in records if r.task not in ("s4", "ms3") or r.frame_idx == 0]
    return [as_training_record(r) for r in keep]


def corpus_texts(root: str | os.PathLike, tasks: Sequence[str], *, seed: int = 0) -> list[str]:
    """Every chat-templated instruction and target text of the train and held-out records."""
    from crab_jax.data.pipeline.grain import read_records
    from crab_jax.families.crab.prompts import build_crab_text
    from crab_jax.data.records.readers import load_answer

    records, errors = read_records(root, tasks, "train", seed=seed)
    if errors:
        raise ValueError(f"{root}: {len(errors)} bad training annotation entries (first: {errors[0]})")
    texts = []
    for r in list(records) + heldout_records(root, tasks, seed=seed):
        instruction, target = build_crab_text(r, load_answer(r, root))
        texts += [instruction, target]
    return texts


# ----------------------------------------------------------------------------- tokenizer


def _write_tokenizer_once(texts: Sequence[str], folder: pathlib.Path) -> pathlib.Path:
    """Builds the word tokenizer into ``folder`` unless it is there (atomic: temp folder + rename)."""
    from crab_jax.data.text.word_tokenizer import build_word_tokenizer

    if (folder / "tokenizer.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    build_word_tokenizer(texts, tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race: its folder is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def synthetic_tokenizer_dir(root: pathlib.Path, tasks: Sequence[str], cache: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    """Folder of the word tokenizer of this dataset's texts (named by their hash) and the texts."""
    texts = corpus_texts(root, tasks)
    digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]
    return cache / "tokenizers" / f"synthetic-{digest}", texts


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
            _write_tokenizer_once(texts, tok_dir)
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
