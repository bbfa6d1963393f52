"""Test data for the pipeline tests: a small synthetic AV-UIE root, a word-level tokenizer
over its texts, and Crab's example builder (the family the shared pipeline is tested with)."""

from __future__ import annotations

import json
import pathlib

import grain
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from crab_jax.data.pipeline import grain as G
from crab_jax.data.pipeline.record_source import RawRecordSource
from crab_jax.data.records.record import load_answer
from crab_jax.data.records.select import read_records
from crab_jax.data.synthetic import generate as synthetic
from crab_jax.families.crab import prompts as P
from crab_jax.families.crab.collate import CollateConfig
from crab_jax.families.crab.example_builder import CrabExampleBuilder, settings_from
from crab_jax.families.crab.presets import tiny_crab_config
from crab_jax.families.crab.tokens import ADDED_TOKENS

TASKS = ("ave", "avqa", "s4", "arig")
BUCKETS = (112, 160)
FALLBACK_FBANK_FRAMES = 96  # every test record has audio: never used


def word_tokenizer(records, root):
    """A word-level LLaMA-like tokenizer over every word of the records' prompts and targets
    (built here, nothing downloaded), with Crab's 17 tokens added after the words."""
    pre = pre_tokenizers.BertPreTokenizer()
    words = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"])}
    for r in records:
        for text in P.build_crab_text(r, load_answer(r, root)):
            for t in ADDED_TOKENS + ("<s>", "</s>"):
                text = text.replace(t, " ")
            for w, _ in pre.pre_tokenize_str(text):
                words.setdefault(w, len(words))
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<s>", "</s>"]})
    P.add_multimodal_tokens(fast)
    return fast, len(words)


def make_dataset(root: pathlib.Path, num_train: int = 6):
    synthetic.generate(root, 0, num_train=num_train, num_test=1, tasks=TASKS, progress=False)
    return root


def setup_for(root, frame_slots=10, audio_slots=10):
    """(records, reader errors, tokenizer, CrabConfig, ExampleSettings) of a synthetic root."""
    records, errors = read_records(root, TASKS)
    tok, base = word_tokenizer(records, root)
    cfg = tiny_crab_config(base_vocab=base)
    settings = settings_from(cfg, root, TASKS, frame_slots=frame_slots, audio_slots=audio_slots)
    return records, errors, tok, cfg, settings


def builder_of(tok, cfg, settings) -> CrabExampleBuilder:
    return CrabExampleBuilder(settings, CollateConfig.from_crab(cfg), tok)


def clean_data(tmp_path_factory):
    """(root, records, errors, tokenizer, CrabConfig, ExampleSettings) of clean synthetic data
    (a test module makes it a fixture: ``clean = pytest.fixture(scope="module", name="clean")(clean_data)``)."""
    root = make_dataset(tmp_path_factory.mktemp("clean"))
    return (root,) + setup_for(root)


def dirty_data(tmp_path_factory):
    """Synthetic data with three kinds of bad records mixed in (+ the bad records' sources)."""
    root = make_dataset(tmp_path_factory.mktemp("dirty"))
    ann = root / "ave" / "valid_train_samples.json"
    rows = json.loads(ann.read_text())
    ann.write_text(json.dumps(rows + [{"vid": "no-event-field", "start_time": 0, "end_time": 1}]))  # reader error
    (root / "ave" / "audio_data" / "ave-train-00001.mp3").write_bytes(b"")  # found by the plan index
    s4 = json.loads((root / "avs" / "s4_samples.json").read_text())
    uid = [r["uid"] for r in s4 if r["split"] == "train"][2]
    (root / "avs" / "v1s" / uid / "labels_semantic" / "0.png").write_bytes(b"")  # found while decoding
    records, errors, tok, cfg, settings = setup_for(root)
    bad_sources = {r.source for r in records
                   if "ave-train-00001" in str(r.audios) or (r.task == "s4" and uid in str(r.mask_path))}
    assert len(bad_sources) == 2 and len(errors) == 1
    return root, records, errors, tok, cfg, settings, bad_sources


def iterator(data, shard=None, **kw):
    root, records, errors, tok, cfg, settings = data[:6]
    kw = dict(dict(global_batch=4, seq_buckets=BUCKETS, seed=3, max_bad_fraction=0.5, workers=0,
                   fallback_fbank_frames=FALLBACK_FBANK_FRAMES), **kw)
    return G.make_iterator(RawRecordSource(records, builder_of(tok, cfg, settings)), shard_options=shard,
                           initial_bad=errors, **kw)


def shard(i, n):
    return grain.sharding.ShardOptions(shard_index=i, shard_count=n)
