"""A miniature transfer study end to end per family (2 tasks, 1 seed, 2 steps), its resume, and
the command line."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from crab_jax.families import get
from crab_jax.study import transfer
from crab_jax.study.plan import plan_runs
from crab_jax.study.schema import load_study_config
from crab_jax.study.transfer_table import JSON_FILE, MARKDOWN_FILE
from tests.study.study_helpers import MINIATURES, TASKS, TINY, miniature
from tests.train_helpers import compile_cache


# Three tiny Crab runs: the seed's initialisation (~50 s on 2 busy cores) and two train-step compiles
# (a single-task step logs one task's losses, the multi-task step two); the rest loads from the cache.
# ~2 min of CPU for the module's real runs, so heavy; test_study_logic_* below cover the same
# bookkeeping with a stand-in trainer in the default selection. Crab+'s three trained runs and its
# untrained floor take about as long: heavy too.
@pytest.fixture(scope="module", params=sorted(MINIATURES))
def study_run(request, tmp_path_factory):
    """The family's miniature study run once; every run's frozen weights, trainable paths and
    trainable weights recorded on the way (trained or not)."""
    tmp = tmp_path_factory.mktemp(f"study_{request.param}")
    training, study = miniature(tmp, MINIATURES[request.param])
    seen = {}

    def recording(build):
        def run(config, workdir, *args):
            result = build(config, workdir, *args)
            seen[workdir.name] = ({k: np.asarray(v) for k, v in _flat(result.state.frozen).items()},
                                  list(result.setup.trainable_paths),
                                  {k: np.asarray(v) for k, v in _flat(result.state.params).items()})
            return result
        return run

    with compile_cache(tmp / "jax_cache"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(transfer, "run_training", recording(transfer.run_training))
        mp.setattr(transfer, "untrained", recording(transfer.untrained))
        table = transfer.run_study(training, study, tmp / "out", command="the command", progress=False)
    return tmp, training, study, table, seen, request.param


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.slow
@pytest.mark.heavy
def test_every_planned_run_finishes_and_scores_every_task(study_run):
    tmp, training, study, table, seen, _ = study_run
    plan = plan_runs(training, study)
    names = [p.name for p in plan]
    assert sorted(seen) == sorted(names) and len(names) == len(TASKS) + len(study.variants)
    for planned in plan:
        result = json.loads((tmp / "out" / "runs" / planned.name / "result.json").read_text())
        assert result["name"] == planned.name and result["trained"] == planned.trains
        assert result["steps_run"] == (2 if planned.trains else 0)
        assert (tmp / "out" / "runs" / planned.name / "checkpoints").is_dir() == planned.trains
        assert set(result["scores"]) == set(TASKS)  # a single-task model too is scored on every task
        assert all(e["n"] == 2 for e in result["scores"].values())
    assert (tmp / "out" / MARKDOWN_FILE).read_text().count("\n| a") == 2  # avqa, ave rows
    assert "the command" in (tmp / "out" / MARKDOWN_FILE).read_text()


@pytest.mark.slow
@pytest.mark.heavy
def test_runs_of_a_seed_share_the_frozen_base_and_train_no_base_weight(study_run):
    _, training, study, _, seen, family = study_run
    llm = get(family).llm_path + "."
    shared = [re.compile(p) for p in study.shared_trainable]
    reference = seen[f"single-lora-{TASKS[0]}-s0"][0]
    for name, (frozen, trainable, _) in seen.items():
        # Only adapters and the shared set train (the tiny Crab study's shared set holds its LM head).
        assert all(".lora_" in p or any(rx.search(p) for rx in shared) for p in trainable), name
        assert all(any(rx.search(p) for p in trainable) for rx in shared), name
        common = [k for k in reference if k in frozen and "lora_" not in k]
        assert any(k.startswith(MINIATURES[family].encoder) for k in common) and any(k.startswith(llm) for k in common)
        for k in common:
            np.testing.assert_array_equal(frozen[k], reference[k], err_msg=f"{name}: {k}")
    for planned in plan_runs(training, study):
        if not planned.trains:  # the untouched base: every adapter's B at its zero init adds nothing
            b = [v for k, v in seen[planned.name][2].items() if k.endswith(".lora_B")]
            assert b and not any(np.any(v) for v in b), planned.name


@pytest.mark.slow
@pytest.mark.heavy
def test_transfer_json_numbers_are_the_differences_of_its_scores(study_run):
    tmp, _, study, _, _, _ = study_run
    table = json.loads((tmp / "out" / JSON_FILE).read_text())
    runs = {r["name"]: r for r in table["runs"]}
    for task in TASKS:
        single = runs[f"single-lora-{task}-s0"]["scores"][task]
        assert table["tasks"][task]["single"]["mean"] == single
        for variant in study.variants:
            multi = runs[f"multi-{variant}-s0"]["scores"][task]
            t = table["tasks"][task]["multi"][variant]["transfer"]
            assert t["per_seed"] == {"0": multi - single} and t["mean"] == multi - single
            assert t["beyond_noise"] is None  # one seed: n/a


@pytest.mark.slow
@pytest.mark.heavy
def test_rerun_skips_finished_runs_and_resumes_a_missing_one(study_run, monkeypatch):
    tmp, training, study, table, _, _ = study_run
    out = tmp / "out"
    trained = [p.name for p in plan_runs(training, study) if p.trains]
    rows = {name: (out / "runs" / name / "metrics.jsonl").read_text() for name in trained}

    def no_training(config, workdir, *args):
        raise AssertionError(f"{workdir.name} trained or built again")

    monkeypatch.setattr(transfer, "run_training", no_training)
    monkeypatch.setattr(transfer, "untrained", no_training)
    again = transfer.run_study(training, study, out, command="the command", progress=False)
    assert again["tasks"] == json.loads(json.dumps(table["tasks"]))  # the same numbers, from the result files

    # A run that stopped before its result.json: resumed from its final checkpoint, not retrained.
    (out / "runs" / "multi-lora-s0" / "result.json").unlink()
    called = []
    monkeypatch.setattr(transfer, "run_training",
                        lambda config, workdir: called.append(workdir.name) or real_run_training(config, workdir))
    with compile_cache(tmp / "jax_cache"):  # the fixture's compiled programs
        transfer.run_study(training, study, out, progress=False)
    assert called == ["multi-lora-s0"] and (out / "runs" / "multi-lora-s0" / "result.json").is_file()
    for name, text in rows.items():
        assert (out / "runs" / name / "metrics.jsonl").read_text() == text, f"{name}: new metrics rows"


from crab_jax.training.loop import run_training as real_run_training  # noqa: E402  (the unpatched one)


# ----------------------------------------------------------------------------- the command line


def test_help_explains_the_variants_and_outputs(capsys):
    from crab_jax.cli.study import main

    with pytest.raises(SystemExit) as e:
        main(["transfer", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for word in ("lora_budget", "floor", "transfer.md", "result.json", "--config.KEY=VALUE", "positive transfer"):
        assert word in text


@pytest.mark.parametrize("args, needle", [
    (["--config.study.seedz=(0,)"], "study.seeds"),
    (["--config.train.num_stepz=3"], "train.num_steps"),
])
def test_a_bad_key_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    from crab_jax.cli.study_transfer import main

    assert main(["--config", TINY, "--workdir", str(tmp_path / "w"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err


def test_a_bad_workdir_or_config_file_is_one_line_and_exit_2(tmp_path, capsys):
    from crab_jax.cli.study_transfer import main

    (tmp_path / "file").write_text("x")
    assert main(["--config", TINY, "--workdir", str(tmp_path / "file")]) == 2
    assert main(["--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "is a file" in lines[0] and "no such config file" in lines[1]


@pytest.mark.parametrize("family", sorted(MINIATURES))
@pytest.mark.parametrize("override, key", [
    ("data.path='/tmp/shared_synthetic'", "data.path"),   # one folder would be regenerated per task set
    ("data.prepared='/tmp/prepared'", "data.prepared"),   # read whole: a single-task run would see every task
])
def test_data_a_single_task_run_cannot_restrict_is_refused(tmp_path, family, override, key):
    from crab_jax.config.check import ConfigError

    training, study = load_study_config(MINIATURES[family].config, [override])
    with pytest.raises(ConfigError, match=key):
        transfer.study_data(training, study, progress=False)


# ----------------------------------------------------------------------------- the study's bookkeeping, fast

# Each family's tiny study config as it is, and Crab+'s with the released recipe's shared set (none:
# an untrained floor).
LOGIC_CASES = [pytest.param(MINIATURES["crab"].config, (), id="crab"),
               pytest.param(MINIATURES["crab_plus"].config, (), id="crab_plus"),
               pytest.param(MINIATURES["crab_plus"].config, ("study.shared_trainable=()",), id="crab_plus-adapters_only")]


def stand_in_score(config, task: str) -> float:
    """A made-up held-out score that depends on the run (tasks, adapter, seed) and the task."""
    key = (tuple(config.data.tasks), int(config.model.lora.num_heads), int(config.model.lora.r),
           tuple(config.trainable), int(config.seed), task)
    return (sum(ord(c) for c in repr(key)) % 97) / 97


@pytest.fixture
def stand_in(monkeypatch):
    """run_training / the untrained build / evaluation / data stood in for: the study's own logic
    only (no model). Returns the names of the runs trained or built, in order."""
    built = []

    def train(config, workdir):
        built.append(workdir.name)
        workdir.mkdir(parents=True, exist_ok=True)
        steps = int(config.train.num_steps)
        with open(workdir / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps({"step": s + 1, "loss": 1.0 / (s + 1)}) + "\n" for s in range(steps))
        return SimpleNamespace(history=[{"loss": 1.0 / (s + 1)} for s in range(steps)], config=config)

    def untrained(config, workdir, data):
        built.append(workdir.name)
        return SimpleNamespace(history=[], config=config)

    def evaluate(config, tasks, result, data):
        assert tuple(config.data.tasks) == result.config.data.tasks and config.data.tokenizer == "/tok"
        return {f"{t}/{t}": {"mean": stand_in_score(result.config, t), "n": 4} for t in tasks}

    monkeypatch.setattr(transfer, "run_training", train)
    monkeypatch.setattr(transfer, "untrained", untrained)
    monkeypatch.setattr(transfer, "evaluate_on_tasks", evaluate)
    monkeypatch.setattr(transfer, "study_data", lambda *a, **k: SimpleNamespace(tokenizer_dir="/tok"))
    return built


@pytest.mark.parametrize("config, overrides", LOGIC_CASES)
def test_study_logic_runs_the_plan_then_skips_it_and_resumes_what_is_missing(tmp_path, stand_in, config, overrides):
    training, study = load_study_config(config, [f"study.tasks={TASKS!r}", "study.seeds=(0,1,2)",
                                                 "train.num_steps=3", *overrides])
    plan = plan_runs(training, study)
    names = [p.name for p in plan]
    table = transfer.run_study(training, study, tmp_path, command="cmd", progress=False)
    assert sorted(stand_in) == sorted(names) and len(names) == 3 * (2 + 4)
    for p in plan:
        result = json.loads((tmp_path / "runs" / p.name / "result.json").read_text())
        assert result["steps_run"] == (3 if p.trains else 0) and result["trained"] == p.trains
    assert [p.trains for p in plan] == [p.variant != "floor" or bool(study.shared_trainable) for p in plan]
    trained = [p.name for p in plan if p.trains]
    metrics = {n: (tmp_path / "runs" / n / "metrics.jsonl").read_text() for n in trained}

    stand_in.clear()
    assert transfer.run_study(training, study, tmp_path, progress=False)["tasks"] == table["tasks"]
    assert stand_in == []  # nothing trained or built again
    (tmp_path / "runs" / "multi-ilora-s1" / "result.json").unlink()
    (tmp_path / "runs" / "multi-floor-s2" / "result.json").unlink()
    transfer.run_study(training, study, tmp_path, progress=False)
    assert stand_in == ["multi-ilora-s1", "multi-floor-s2"]
    assert all((tmp_path / "runs" / n / "metrics.jsonl").read_text() == metrics[n]
               for n in trained if n not in stand_in)


@pytest.mark.parametrize("config, overrides", LOGIC_CASES)
def test_study_logic_table_numbers_are_the_differences_of_the_scores_in_transfer_json(tmp_path, stand_in, config,
                                                                                       overrides):
    training, study = load_study_config(config, [f"study.tasks={TASKS!r}", "study.seeds=(0,1,2)",
                                                 "train.num_steps=1", *overrides])
    transfer.run_study(training, study, tmp_path, progress=False)
    table = json.loads((tmp_path / JSON_FILE).read_text())
    runs = {r["name"]: r["scores"] for r in table["runs"]}
    for task in TASKS:
        single = {s: runs[f"single-lora-{task}-s{s}"][task] for s in (0, 1, 2)}
        for variant in study.variants:
            diffs = [runs[f"multi-{variant}-s{s}"][task] - single[s] for s in (0, 1, 2)]
            t = table["tasks"][task]["multi"][variant]["transfer"]
            assert [t["per_seed"][str(s)] for s in (0, 1, 2)] == diffs
            assert t["mean"] == pytest.approx(np.mean(diffs)) and t["std"] == pytest.approx(np.std(diffs, ddof=1))
            assert t["beyond_noise"] == (abs(np.mean(diffs)) > 2 * np.std(diffs, ddof=1) / np.sqrt(3))
    assert table["headline_text"] in (tmp_path / MARKDOWN_FILE).read_text()


@pytest.mark.heavy
def test_a_study_over_avuie_records_trains_and_scores_every_run(tmp_path):
    """``data.source=avuie``: the study reads AV-UIE records (the synthetic set's AV-UIE layout,
    written once here) with a given tokenizer, like a study over the real dataset."""
    from crab_jax.data.sources import prepare_data
    from crab_jax.training.setup import resolve

    training, study = miniature(tmp_path, MINIATURES["crab"])
    made = prepare_data(resolve(transfer.set_keys(training, {"data.tasks": TASKS}))[0].data, get("crab"),
                        progress=False)
    training, study = miniature(tmp_path, MINIATURES["crab"], "data.source='avuie'", f"data.path={str(made.root)!r}",
                                f"data.tokenizer={str(made.tokenizer_dir)!r}")
    with compile_cache(tmp_path / "jax_cache"):
        table = transfer.run_study(training, study, tmp_path / "out", progress=False)
    runs = plan_runs(training, study)
    for run in runs:
        result = json.loads((tmp_path / "out" / "runs" / run.name / "result.json").read_text())
        assert set(result["scores"]) == set(TASKS) and result["steps_run"] == 2
    assert set(table["tasks"]) == set(TASKS)
