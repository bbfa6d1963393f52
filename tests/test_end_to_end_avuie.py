"""End to end on an AV-UIE-layout folder (issue 11, Parity): test records of all nine Crab tasks
(:mod:`tests.avuie_layout`, media linked from ``../shared/media``) go through ``python -m
crab_jax.infer --weights W --data-root ROOT --tasks ...`` and ``python -m crab_jax.evaluate
--task all`` with the tiny converted fixture model (W = ``to-jax`` of ``crab_full``'s files,
its word-level tokenizer), and through training's held-out evaluation (``heldout_split`` +
``generation.evaluate(records=...)``). Every record must reach its task's table: scored
(parsable or not) or unusable, never dropped."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from crab_jax.data.records.crab import CRAB_TASKS
from crab_jax.data.records.record import CrabLayout
from crab_jax.evaluation.scoring import metric_key
from crab_jax.families.crab.family import FAMILY
from crab_jax.families.crab.predictions import SKIP_SPECIAL_TOKEN_TASKS
from tests.avuie_layout import REF_AVS_TEST_SPLITS, write_avuie_root

MEDIA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "media"
MAX_NEW_TOKENS = 8     # a few tokens per sample: the tables, not the answers, are under test
LENGTH_MULTIPLE = 512  # few length buckets: few compiles
BATCH = 4
# The paper's metric names of each task's table (spec A.6), as evaluate prints them. Captioning
# and Ref-AVS rows exist only for what was scored (a caption scorer with no non-empty caption
# has no rows; Ref-AVS has one group per split present).
PAPER_METRICS = {
    "avqa": {"accuracy"},
    "ave": {"segment accuracy"},
    "avvp": {f"{level} {m}" for level in ("segment", "event")
             for m in ("Audio", "Visual", "Audio-Visual", "Type@AV", "Event@AV")},
    "arig": {"mIoU", "cIoU", "AUC"},
    "avcap": {"BLEU@4", "ROUGE-L", "CIDEr"},
    "s4": {"J (mIoU)", "F"},
    "ms3": {"J (mIoU)", "F"},
    "avss": {"mIoU", "F", "mIoU_noBg", "F_noBg"},
    "ref-avs": {"seen J (mIoU)", "seen F", "unseen J (mIoU)", "unseen F", "null S (lower is better)"},
}


@pytest.fixture(scope="module")
def avuie_root(tmp_path_factory):
    if not MEDIA.is_dir():
        pytest.skip(f"example media not found at {MEDIA}")
    root = tmp_path_factory.mktemp("avuie")
    return root, write_avuie_root(root, MEDIA)


def test_the_readers_give_every_test_record_of_the_layout(avuie_root):
    """The layout and the readers agree (Ref-AVS: the seen, unseen and null rows all read)."""
    root, counts = avuie_root
    for task in CRAB_TASKS:
        records, errors = FAMILY.read_records(root, (task,), "test", seed=0)
        assert errors == [] and len(records) == counts[task], (task, errors, len(records))
        assert all(r.mode == "test" and r.gt is not None for r in records), task
    refs, _ = FAMILY.read_records(root, ("ref-avs",), "test", seed=0)
    assert sorted({r.split for r in refs}) == sorted(REF_AVS_TEST_SPLITS)


def test_every_test_record_plans_with_its_gt_as_target(avuie_root):
    """The test records, with their GT as the target (what infer and the held-out split build),
    pass the builder's planning: no placeholder hit by a GT text (AVVP's ``<audio>`` tags), media
    within the slots sized from the tasks."""
    from crab_jax.config.schema import get_config
    from crab_jax.config.sections import RunConfig
    from crab_jax.data.sources import gt_as_answer
    from crab_jax.families.crab.presets import tiny_crab_config
    from tests.data.pipeline.crab_data import word_tokenizer

    root, counts = avuie_root
    records = gt_as_answer(FAMILY.read_records(root, CRAB_TASKS, "test", seed=0)[0])
    assert len(records) == sum(counts.values()) and all(r.answer is not None for r in records)
    tokenizer, base = word_tokenizer(records, root)
    data = dataclasses.replace(RunConfig.from_config(get_config()).data, tasks=CRAB_TASKS)
    builder = FAMILY.example_builder(tiny_crab_config(base_vocab=base), data, root, tokenizer)
    for record in records:
        assert builder.plan_info(record).expanded_len > 0, record.source


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in open(path)]


BAD_TASK = "ave"  # the task whose annotation gets two bad entries in the infer run


def _add_bad_entries(root: pathlib.Path) -> None:
    """Two more AVE test entries: one whose video is missing (its record fails alone when decoded)
    and one without ``vid`` (the reader rejects it)."""
    ann = root / CrabLayout().ave / "test_samples.json"
    entries = json.loads(ann.read_text())
    entries += [{"event": "Church bell", "vid": "missing_video", "start_time": 0, "end_time": 3},
                {"event": "Church bell", "start_time": 0, "end_time": 3}]
    ann.write_text(json.dumps(entries))


@pytest.fixture(scope="module")
def inferred(converted_crab, fixtures_dir, tmp_path_factory):
    """``(expected lines per task, exit code, preds lines, evaluate exit code, report JSON)`` of
    infer + evaluate over all tasks of a layout with two bad AVE entries."""
    from crab_jax.cli.evaluate import main as evaluate_main
    from crab_jax.cli.infer import main as infer_main

    if not MEDIA.is_dir():
        pytest.skip(f"example media not found at {MEDIA}")
    root = tmp_path_factory.mktemp("avuie_bad")
    counts = write_avuie_root(root, MEDIA)
    _add_bad_entries(root)
    counts[BAD_TASK] += 2
    weights, _ = converted_crab
    out = tmp_path_factory.mktemp("e2e")
    code = infer_main([str(a) for a in (
        "--weights", weights, "--tokenizer", fixtures_dir / "crab_full" / "tokenizer_mm", "--data-root", root,
        "--tasks", ",".join(CRAB_TASKS), "--output", out / "preds.jsonl", "--max-new-tokens", MAX_NEW_TOKENS,
        "--batch-size", BATCH, "--length-multiple", LENGTH_MULTIPLE, "--no-progress")])
    eval_code = evaluate_main(["--task", "all", "--predictions", str(out / "preds.jsonl"), "--data-root", str(root),
                               "--json", str(out / "tables.json")])
    return counts, code, _lines(out / "preds.jsonl"), eval_code, json.loads((out / "tables.json").read_text())


@pytest.mark.slow
def test_infer_writes_one_line_per_record_in_the_originals_format(inferred):
    counts, code, lines, _, _ = inferred
    assert code == 0
    assert {t: sum(line["task"] == t for line in lines) for t in CRAB_TASKS} == counts
    failed = [line for line in lines if "error" in line]
    for line in lines:
        if "error" in line:
            continue
        # the original's infer_results.jsonl fields, the prediction as it decodes it
        assert {"instruction", "output", "predict"} <= set(line) and line["output"], line
        # "<s>" first (the dummy BOS of the sequences), except AVVP, decoded without special tokens
        assert line["predict"].startswith("<s>") != (line["task"] in SKIP_SPECIAL_TOKEN_TASKS), line
    refs = [line for line in lines if line["task"] == "ref-avs"]
    assert sorted({line["reference"]["split"] for line in refs}) == sorted(REF_AVS_TEST_SPLITS)
    # the two bad entries: a record whose video is missing (its metadata, the path and reason) and
    # an entry the reader rejected (its file and entry, the reason), each on its own line
    missing, rejected = failed
    assert missing["task"] == rejected["task"] == BAD_TASK and "predict" not in missing and "predict" not in rejected
    assert "missing_video.mp4" in missing["error"] and missing["reference"]["event"] == "Church bell"
    assert rejected["source"] == f"{CrabLayout().ave}/test_samples.json#{counts[BAD_TASK] - 1}"
    assert "missing field 'vid'" in rejected["error"]


@pytest.mark.slow
def test_evaluate_accounts_for_every_record_in_its_tasks_table(inferred):
    counts, _, lines, eval_code, report = inferred
    assert eval_code == 0
    assert sorted(report["tasks"]) == sorted(CRAB_TASKS) and report["ignored"] == 0
    # the rejected entry has no reference: unusable, reported with its line number
    rejected = [i + 1 for i, line in enumerate(lines) if "error" in line and "reference" not in line]
    assert [u["line"] for u in report["unusable"]] == rejected
    for task, table in report["tasks"].items():
        accounted = table["scored"] + len(table["unusable"])  # scored includes the unparsable, counted as wrong
        assert accounted == counts[task] and table["unparsable"] <= table["scored"], (task, table)
        if task == BAD_TASK:  # the record whose video is missing is scored as wrong, the rejected entry unusable
            assert table["unparsable"] >= 1 and len(table["unusable"]) == 1
        names = {m["name"] for m in table["metrics"]}
        wanted = PAPER_METRICS[task]
        if task == "avcap" and table["unparsable"] == table["scored"]:
            wanted = set()  # no caption to score (every generated one empty)
        assert wanted <= names, (task, sorted(names))


@pytest.mark.slow
# ~80 s on 2 cores: outside CI's default selection (-m heavy); CI keeps infer + evaluate over the
# same records (above) and the held-out path on the synthetic tasks (tests/test_train.py).
@pytest.mark.heavy
def test_heldout_evaluation_scores_every_record_of_every_task(avuie_root, converted_crab, fixtures_dir, tmp_path):
    """Training's held-out path on the same folder: ``heldout_split`` batches of an ``avuie`` run
    generated by the tiny converted model and scored against their records
    (``generation.evaluate(records=...)``): every task's table, over every record."""
    from crab_jax.config.schema import get_config
    from crab_jax.config.sections import RunConfig
    from crab_jax.data.sources import gt_as_answer, heldout_split, prepare_data
    from crab_jax.evaluation.converted_model import load_converted_model
    from crab_jax.evaluation.generation import evaluate
    from crab_jax.models.decoding import DecodeConfig

    root, counts = avuie_root
    weights, _ = converted_crab
    model_cfg, model = load_converted_model(FAMILY, str(weights))
    config = get_config()
    config.data.source, config.data.path = "avuie", str(root)
    config.data.tokenizer = str(fixtures_dir / "crab_full" / "tokenizer_mm")
    config.data.tasks, config.data.cache_dir = CRAB_TASKS, str(tmp_path / "cache")
    config.model.preset, config.model.init_checkpoint = "checkpoint", str(weights)
    config.eval.batch_size = BATCH
    run = RunConfig.from_config(config)
    data = prepare_data(run.data, FAMILY, progress=False)
    # One token-length bucket that holds the longest test prompt + its target: one compile, no record too long.
    builder = FAMILY.example_builder(model_cfg, run.data, root, data.tokenizer)
    records, _ = FAMILY.read_records(root, CRAB_TASKS, "test", seed=0)
    longest = max(builder.plan_info(r).expanded_len for r in gt_as_answer(records))
    config.data.buckets = (-(-int(longest) // 64) * 64,)
    run = RunConfig.from_config(config)
    held = heldout_split(run, FAMILY, model_cfg, data)
    assert held is not None and held.by_record and len(held.records) == sum(counts.values())
    tokenizer = data.tokenizer
    dcfg = DecodeConfig(max_new_tokens=MAX_NEW_TOKENS, eos_token_id=int(tokenizer.eos_token_id),
                        pad_token_id=int(FAMILY.pad_token_id(model_cfg)))
    lines: list = []
    results = evaluate(FAMILY, model, model_cfg, held.batches, tokenizer, CRAB_TASKS, dcfg=dcfg, records_out=lines,
                       records=held.records, data_root=str(root))
    print("held-out:", {k: round(v["mean"], 4) for k, v in sorted(results.items())})
    assert {t: sum(line["task"] == t for line in lines) for t in CRAB_TASKS} == counts
    for task in CRAB_TASKS:
        # every line of the task was scored (its unparsable fraction is over all of them)
        assert results[f"{task}/unparsable"]["n"] == counts[task], (task, results.get(f"{task}/unparsable"))
        names = {key.split("/", 1)[1] for key in results if key.startswith(task + "/")}
        wanted = {metric_key(task, m).split("/", 1)[1] for m in PAPER_METRICS[task]}
        if task == "avcap" and results["avcap/unparsable"]["mean"] == 1.0:
            wanted = set()
        assert wanted <= names, (task, sorted(names))
