"""Resume on the tiny CPU Crab with faults injected: a damaged latest checkpoint (array file
truncated or deleted, no ``_METADATA``) falls back to the previous committed step and is kept;
a changed config is named key by key before anything compiles; a second run on a workdir in
use refuses."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import pytest

from tests.train_helpers import compile_cache, small_config

STEPS, EVERY = 4, 2
RUN = {"train.num_steps": STEPS, "checkpoint.every_steps": EVERY, "checkpoint.keep": 3}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("jax_cache_resume")
    with compile_cache(d):
        yield d


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A workdir with committed steps 2 and 4."""
    from crab_jax.training.loop import train

    workdir = tmp_path_factory.mktemp("trained")
    train(small_config(**RUN), workdir)
    return workdir


@pytest.fixture
def workdir(trained, tmp_path):
    """A copy of the trained workdir, free to damage."""
    return shutil.copytree(trained, tmp_path / "run")


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if the trainer gets as far as building the state or the step."""
    import crab_jax.training.loop as loop

    def compiled(*args, **kwargs):
        raise AssertionError("the run got as far as compiling")

    monkeypatch.setattr(loop, "initial_state", compiled)
    monkeypatch.setattr(loop, "jit_train_step", compiled)


def data_files(workdir, step: int, item: str = "params") -> list:
    """The OCDBT data files the committed manifest of ``item`` points into (``<item>/d/*``)."""
    files = sorted((workdir / "checkpoints" / str(step) / item / "d").iterdir())
    assert files, f"no data files under step {step}/{item}/d"
    return files


def steps_of(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_changed_seed_is_named_before_anything_compiles(workdir, no_compile):
    from crab_jax.training.loop import train
    from crab_jax.training.resume import ConfigChanged

    with pytest.raises(ConfigChanged) as info:
        train(small_config(**RUN, seed=1), workdir)
    lines = str(info.value).splitlines()
    assert "  seed: 0 -> 1" in lines and "allow_config_change" in lines[-1]
    assert not any("num_steps" in line for line in lines)


def test_changed_grad_clip_and_init_checkpoint_are_named_one_line_each(workdir, no_compile):
    from crab_jax.training.loop import train
    from crab_jax.training.resume import ConfigChanged

    with pytest.raises(ConfigChanged) as info:
        train(small_config(**{**RUN, "optim.grad_clip": 0.0, "model.init_checkpoint": "/converted/crab",
                                 "train.num_steps": 10, "metrics.log_every": 5}), workdir)
    lines = str(info.value).splitlines()
    assert '  model.init_checkpoint: "" -> "/converted/crab"' in lines and "  optim.grad_clip: 1.0 -> 0.0" in lines
    assert len([x for x in lines if x.startswith("  ")]) == 2, "safe keys (num_steps, log_every) are not listed"


def test_allowed_change_of_the_optax_chain_names_the_state_not_orbax(workdir, no_compile, caplog):
    from crab_jax.checkpoints.run import CheckpointMismatch
    from crab_jax.training.loop import train
    from crab_jax.training.resume import ConfigChanged

    with caplog.at_level(logging.WARNING, logger="crab_jax.train"):
        with pytest.raises(CheckpointMismatch, match="optimizer state leaves do not match") as info:
            train(small_config(**RUN, **{"optim.grad_clip": 0.0, "train.allow_config_change": True}), workdir)
    assert not isinstance(info.value, ConfigChanged)
    assert any("allow_config_change=True" in r.getMessage() and "optim.grad_clip: 1.0 -> 0.0" in r.getMessage()
               for r in caplog.records)


def test_truncated_array_file_falls_back_to_the_previous_step_and_keeps_it(workdir, caplog):
    from crab_jax.training.loop import train

    damaged = data_files(workdir, STEPS)[0]
    size = damaged.stat().st_size // 3
    with open(damaged, "r+b") as f:
        f.truncate(size)
    with caplog.at_level(logging.WARNING, logger="crab_jax.train"):
        history = train(small_config(**{**RUN, "train.num_steps": STEPS + 2}), workdir)
    assert [h["step"] for h in history] == list(range(EVERY + 1, STEPS + 3)), "resumed from step 2"
    warning = next(r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage())
    assert f"checkpoint step {STEPS}" in warning and "array " in warning and str(damaged.name) in warning
    assert f"previous committed step {EVERY}" in warning and "\n" not in warning
    kept = list((workdir / "corrupt_checkpoints").iterdir())
    assert [p.name.split("-")[0] for p in kept] == [str(STEPS)]
    assert (kept[0] / "params" / "d" / damaged.name).stat().st_size == size, "the damaged step is kept as it was"
    assert steps_of(workdir) == [EVERY, STEPS, STEPS + 2], "step 4 was written again, nothing retention-deleted"


def test_deleted_array_file_without_fallback_names_step_and_file(workdir, no_compile):
    from crab_jax.checkpoints.run import CorruptCheckpoint
    from crab_jax.training.loop import train

    damaged = data_files(workdir, STEPS, "opt_state")[0]
    damaged.unlink()
    with pytest.raises(CorruptCheckpoint) as info:
        train(small_config(**RUN, **{"checkpoint.fallback_on_corrupt": False}), workdir)
    msg = str(info.value)
    assert "\n" not in msg and f"checkpoint step {STEPS}" in msg and str(damaged) in msg and "NOT_FOUND" in msg
    assert f"fallback_on_corrupt=True to resume from step {EVERY}" in msg
    assert steps_of(workdir) == [EVERY, STEPS] and not (workdir / "corrupt_checkpoints").exists()


def _resume(workdir, **overrides):
    from crab_jax.checkpoints.run import Checkpointer
    from crab_jax.config.sections import RunConfig
    from crab_jax.training.resume import Resume
    from crab_jax.training.setup import build_setup

    c = small_config(**RUN, **overrides)
    setup, _, _ = build_setup(c)  # shapes only: nothing compiles
    run = RunConfig.from_config(c)
    return Resume(Checkpointer(workdir / "checkpoints", async_save=False), workdir, run, run.as_dict(),
                  setup.abstract)


def test_missing_metadata_falls_back_with_a_warning(workdir, caplog):
    (workdir / "checkpoints" / str(STEPS) / "params" / "_METADATA").unlink()
    with caplog.at_level(logging.WARNING, logger="crab_jax.train"):
        assert _resume(workdir).choose() == EVERY
    assert any(f"checkpoint step {STEPS}" in r.getMessage() and "params/_METADATA is missing" in r.getMessage()
               for r in caplog.records)
    kept = next((workdir / "corrupt_checkpoints").iterdir())
    assert (kept / "opt_state" / "_METADATA").is_file() and not (kept / "params" / "_METADATA").exists()


def test_no_readable_step_left_says_so(workdir):
    from crab_jax.checkpoints.run import CorruptCheckpoint

    for step in (EVERY, STEPS):
        (workdir / "checkpoints" / str(step) / "meta" / "metadata").write_text('{"step": ')
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint step {EVERY} .*damaged JSON.*no earlier committed step"):
        _resume(workdir).choose()
    assert len(list((workdir / "corrupt_checkpoints").iterdir())) == 2


def test_a_second_run_on_a_workdir_in_use_refuses(tmp_path, no_compile):
    from crab_jax.io.workdir_lock import LOCK_NAME, WorkdirLocked
    from crab_jax.training.loop import train
    from tests.io.test_workdir_lock import write_lock

    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_lock(workdir, pid=holder.pid)
        with pytest.raises(WorkdirLocked, match=f"in use by another run .*pid {holder.pid}"):
            train(small_config(**RUN), workdir)
        assert (workdir / LOCK_NAME).exists(), "the holder's lock stays"
    finally:
        holder.kill()
        holder.wait()


def test_the_command_refuses_a_workdir_in_use_in_one_line(tmp_path):
    from tests.io.test_workdir_lock import write_lock
    from tests.train_helpers import REPO

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_lock(tmp_path, pid=holder.pid)
        proc = subprocess.run([sys.executable, "-m", "crab_jax.train", "--workdir", str(tmp_path)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --workdir") and f"pid {holder.pid}" in last and "stop that run" in last
