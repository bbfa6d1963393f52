"""``python -m crab_jax.study routes``: the folder it writes (every array in index.json with its
real shape, dtype and axes; the PNGs), bad command lines in one line with exit status 2, and
(slow) the command end to end on a tiny trained Crab run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crab_jax.config.command_line import USAGE_EXIT
from crab_jax.evaluation.route_figures import HEAD_TASK_PNG, LAYERS_PNG, PLOT_METADATA_KEY, SIMILARITY_PNG
from crab_jax.study.routes import INDEX_JSON, write_routes
from tests.evaluation.route_helpers import make_routes
from tests.train_helpers import compile_cache, synthetic_tiny_config

PNGS = (HEAD_TASK_PNG, LAYERS_PNG, SIMILARITY_PNG)


def check_folder(out) -> dict:
    """Every array index.json names loads without pickle with its shape / dtype, one axis name per
    dimension, the named axes agree in size; returns the loaded arrays."""
    index = json.loads((out / INDEX_JSON).read_text())
    arrays = {}
    for name, entry in index["arrays"].items():
        value = np.load(out / entry["file"], allow_pickle=False)
        assert list(value.shape) == entry["shape"] and str(value.dtype) == entry["dtype"], name
        assert len(entry["axes"]) == value.ndim and entry["meaning"], name
        arrays[name] = value
    sizes = {"task": len(arrays["tasks"]), "layer": len(arrays["layers"]), "projection": len(arrays["projections"]),
             "head": len(arrays["heads"]), "modality": len(arrays["modalities"]), "token": len(arrays["token_task"]),
             "similarity_task": len(arrays["similarity_tasks"])}
    for name, entry in index["arrays"].items():
        assert [sizes[a] for a in entry["axes"]] == entry["shape"], name
    assert sorted(index["figures"]) == sorted(PNGS)
    for png in PNGS:
        assert (out / png).stat().st_size > 0
    return arrays


def test_the_folder_holds_every_array_its_index_describes(tmp_path):
    rng = np.random.default_rng(0)
    routes = make_routes(("avqa", "ave", "none"), rng.integers(0, 2, 30), rng)
    write_routes(routes, tmp_path / "out")
    arrays = check_folder(tmp_path / "out")
    np.testing.assert_array_equal(arrays["gates"], routes.gates)
    np.testing.assert_array_equal(arrays["token_task"], routes.task)
    assert arrays["tasks"].tolist() == ["avqa", "ave", "none"]
    assert arrays["modalities"].tolist() == ["text", "visual", "audio"]
    assert arrays["task_tokens"].tolist() == [int((routes.task == t).sum()) for t in range(3)]


@pytest.mark.parametrize("case", ["unknown_flag", "missing_weights", "not_weights", "converted_without_config"])
def test_bad_command_lines_fail_in_one_line(case, tmp_path, capsys):
    from crab_jax.cli.study import main

    argv, named = ["--out", str(tmp_path / "out")], None
    if case == "unknown_flag":
        argv += ["--weights", str(tmp_path), "--bogus"]
        named = "--bogus"
    elif case == "missing_weights":
        argv += ["--weights", str(tmp_path / "nothing")]
        named = str(tmp_path / "nothing")
    elif case == "not_weights":
        argv += ["--weights", str(tmp_path)]
        named = "checkpoints/"
    else:
        (tmp_path / "params").mkdir()
        argv += ["--weights", str(tmp_path)]
        named = "--config"
    with pytest.raises(SystemExit) as exit_info:
        main(["routes", *argv])
    assert exit_info.value.code == USAGE_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_help_explains_the_files():
    from crab_jax.cli.study_routes import build_parser

    text = build_parser().format_help()
    assert "--weights" in text and "index.json" in text and "gates.npy" in text


TASKS = ("avqa", "s4")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 1-step tiny Crab run on the synthetic data (checkpointed, no evaluation)."""
    from crab_jax.training.loop import run_training

    tmp = tmp_path_factory.mktemp("routes_run")
    c = synthetic_tiny_config(tmp, TASKS, num_train=4, steps=1, **{
        "checkpoint.every_steps": 1, "checkpoint.async_save": False, "eval.at_end": False,
        "metrics.tensorboard": False})
    with compile_cache(tmp_path_factory.mktemp("jax_cache_routes")):
        run_training(c, tmp / "workdir")
    return tmp / "workdir"


@pytest.mark.slow
@pytest.mark.heavy  # a tiny run trained, restored and compiled: ~2 minutes of CPU
def test_the_command_writes_routes_of_a_trained_run(trained_run, tmp_path, capsys):
    from crab_jax.cli.study import main

    out = tmp_path / "routes"
    assert main(["routes", "--weights", str(trained_run), "--out", str(out), "--max-batches", "1",
                 "--no-progress"]) == 0
    assert "tokens per task" in capsys.readouterr().out
    arrays = check_folder(out)
    assert arrays["tasks"].tolist() == list(TASKS)
    gates = arrays["gates"]
    assert gates.shape[0] > 0 and gates.shape[-1] == 3  # configs/tiny.py: I-LoRA with 3 heads
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-5)
    assert set(np.unique(arrays["token_modality"]).tolist()) == {0, 1, 2}  # text, frames and audio rows
    meta = json.loads(Image.open(out / HEAD_TASK_PNG).text[PLOT_METADATA_KEY])
    assert meta["rows"] == list(TASKS) and meta["shape"] == [len(TASKS), 3]


@pytest.fixture(scope="module")
def crab_plus_study_run(tmp_path_factory):
    """The multi-task I-LoRA run of a miniature Crab+ study (1 step), trained and scored by the
    study's own code into its run folder (DIR/runs/multi-ilora-s0: checkpoints, result.json)."""
    from crab_jax.study import transfer
    from crab_jax.study.plan import plan_runs
    from tests.study.study_helpers import MINIATURES, miniature

    tmp = tmp_path_factory.mktemp("crab_plus_routes")
    training, study = miniature(tmp, MINIATURES["crab_plus"], "study.variants=('ilora',)", "train.num_steps=1")
    planned = next(p for p in plan_runs(training, study) if p.variant == "ilora")
    with compile_cache(tmp / "jax_cache"):
        data = transfer.study_data(training, study, progress=False)
        transfer.train_and_score(training, study, planned, data, tmp / "out" / transfer.RUNS_DIR / planned.name)
    return tmp / "out" / transfer.RUNS_DIR / planned.name, training, study


@pytest.mark.slow
@pytest.mark.heavy  # a tiny Crab+ trained one step, scored, restored and compiled again: 1-2 minutes of CPU
def test_the_command_writes_routes_of_a_crab_plus_study_run(crab_plus_study_run, tmp_path, capsys):
    from crab_jax.cli.study import main
    from crab_jax.study.transfer import read_result
    from crab_jax.training.setup import resolve

    run_dir, training, study = crab_plus_study_run
    result = read_result(run_dir)
    assert result["variant"] == "ilora" and result["steps_run"] == 1
    out = tmp_path / "routes"
    assert main(["routes", "--weights", str(run_dir), "--out", str(out), "--max-batches", "1", "--no-progress"]) == 0
    assert "tokens per task" in capsys.readouterr().out
    arrays = check_folder(out)
    assert arrays["tasks"].tolist() == list(study.tasks)
    run, family = resolve(training)
    cfg = family.model_config(run.model, 64)
    gates = arrays["gates"]
    # The LLM's layers and the run's I-LoRA heads (the towers' routers are not tokens' routers).
    assert gates.shape[1:] == (family.num_llm_layers(cfg), len(run.model.lora.targets),
                               result["overrides"]["model.lora.num_heads"])
    assert gates.shape[0] > 0 and gates.shape[-1] >= 2
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-5)
    assert set(np.unique(arrays["token_modality"]).tolist()) == {0, 1, 2}  # text, frames and audio rows
