"""The family-free quick-start loop with a stub family and builder (no model): grouping by
budget, length buckets and filler rows, input order of the lines, bad items, mask files."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.pipeline.buckets import PlanInfo
from crab_jax.evaluation.prediction_lines import OrderedJsonLines
from crab_jax.evaluation.quick_start import QuickStartOptions, run_quick_start
from crab_jax.families.base import SamplePrediction


@dataclasses.dataclass(frozen=True)
class StubRecord:
    task: str
    source: str
    length: int
    bad: bool = False
    image_path: str | None = None
    video_path: str | None = None
    audio_path: str | None = None
    mask_path: str | None = None


class StubBuilder:
    min_fbank_frames = 16

    def build(self, record, index):
        if record.bad:
            raise BadRecordError(f"media/{record.source}.mp4", "video file not found")
        return SimpleNamespace(record=record, filler=False)

    def example_plan_info(self, ex):
        return PlanInfo(ex.record.length, 0)

    def filler(self, ex):
        return SimpleNamespace(record=ex.record, filler=True)

    def collate(self, examples, bucket):
        return {"sources": [e.record.source for e in examples], "fillers": [e.filler for e in examples],
                "seq_len": bucket.seq_len}


def stub_family(calls):
    def generate(model, batch, dcfg, rng):
        assert batch["prompt_only"], "generate must get the prompt batch (targets cut off)"
        calls.append((batch["seq_len"], len(batch["sources"]), sum(batch["fillers"]), dcfg.max_new_tokens))
        return batch

    def predictions(generation, records, tokenizer):
        out = []
        for rec in records:
            logits = np.full((8, 8), 1.0 if rec.task == "seg" else -1.0, np.float32) if rec.task == "seg" else None
            out.append(SamplePrediction(text=f"answer to {rec.source}", generated_ids=np.asarray([5, 2]),
                                        finished=True, mask_tokens=6 if logits is not None else 0, mask_logits=logits))
        return out

    def prompt_batch(batch, cfg, *, padding="left"):
        return SimpleNamespace(batch={**batch, "prompt_only": True})

    return SimpleNamespace(name="stub", generate=generate, predictions=predictions, pad_token_id=lambda cfg: 0,
                           batch=SimpleNamespace(prompt_batch=prompt_batch),
                           prediction_metadata=None, default_max_new_tokens=lambda task: 100 if task == "seg" else 500)


def test_lines_in_input_order_with_buckets_fillers_and_errors(tmp_path):
    records = [StubRecord("ave", "a", 70), StubRecord("seg", "b", 10), StubRecord("ave", "c", 200, bad=True),
               StubRecord("ave", "d", 100), StubRecord("ave", "e", 130)]
    calls = []
    tokenizer = SimpleNamespace(eos_token_id=2)
    out = tmp_path / "preds.jsonl"
    result = run_quick_start(stub_family(calls), None, None, StubBuilder(), tokenizer, records,
                             media_root=str(tmp_path), output=str(out),
                             options=QuickStartOptions(batch_size=2, length_multiple=64, progress=False))
    assert (result.done, result.failed) == (4, 1)
    lines = [json.loads(x) for x in open(out)]
    assert [line["source"] for line in lines] == ["a", "b", "c", "d", "e"]
    assert lines[2]["error"] == "media/c.mp4: video file not found" and "predict" not in lines[2]
    assert lines[0]["predict"] == "answer to a" and lines[0]["generated_ids"] == [5, 2]
    # ave: 70 and 100 share the 128 bucket (one full batch), 130 -> 192 with a filler; seg: its own budget
    assert sorted(calls) == sorted([(128, 2, 0, 500), (192, 2, 1, 500), (64, 2, 1, 100)])
    assert lines[1]["mask_tokens"] == 6 and (tmp_path / lines[1]["pred_mask_path"]).is_file()
    assert lines[1]["pred_logits_path"].startswith("masks/") and "overlay_path" not in lines[1]  # no image
    assert "pred_mask_path" not in lines[0]


def test_entries_the_reader_rejected_get_their_lines_after_the_records(tmp_path):
    out = tmp_path / "p.jsonl"
    errors = [("ave", BadRecordError("ave/test_samples.json#3", "missing field 'vid'"))]
    result = run_quick_start(stub_family([]), None, None, StubBuilder(), SimpleNamespace(eos_token_id=2),
                             [StubRecord("ave", "a", 5)], media_root=str(tmp_path), output=str(out),
                             options=QuickStartOptions(progress=False), read_errors=errors)
    assert (result.done, result.failed, result.unreadable) == (1, 0, 1)
    lines = [json.loads(x) for x in open(out)]
    assert lines[1] == {"task": "ave", "source": "ave/test_samples.json#3",
                        "error": "ave/test_samples.json#3: missing field 'vid'"}


def test_max_new_tokens_flag_overrides_the_family_budget(tmp_path):
    calls = []
    run_quick_start(stub_family(calls), None, None, StubBuilder(), SimpleNamespace(eos_token_id=2),
                    [StubRecord("ave", "a", 5), StubRecord("seg", "b", 5)], media_root=str(tmp_path),
                    output=str(tmp_path / "p.jsonl"), options=QuickStartOptions(max_new_tokens=7, progress=False))
    assert [c[3] for c in calls] == [7, 7]  # one group: both tasks get the flag's budget


def test_ordered_writer_keeps_order_and_refuses_duplicates(tmp_path):
    path = tmp_path / "x.jsonl"
    w = OrderedJsonLines(path)
    w.add(1, {"i": 1})
    assert path.read_text() == ""  # waits for line 0
    w.add(0, {"i": 0})
    assert [json.loads(x)["i"] for x in open(path)] == [0, 1]
    with pytest.raises(ValueError, match="twice"):
        w.add(1, {"i": 1})
    w.add(3, {"i": 3})
    with pytest.raises(ValueError, match="never given"):
        w.close()
