"""Crash safety and portability of the trainer's checkpoints.

* ``kill -9`` while an asynchronous save is being written: the same command again resumes
  from the last COMMITTED step and reproduces the uninterrupted loss trajectory bit for bit.
* A checkpoint written on 1 device restores onto 8 (fsdp x tensor) and, saved there, back
  onto 1: the parameters are equal.

The kill is deterministic: ``CRAB_JAX_KILL_AFTER_SAVE_STEP`` (crab_jax.checkpoints.run) makes
the run SIGKILL itself right after the save of that step was scheduled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests import jax_env
from tests.train_helpers import REPO, small_config

STEPS, EVERY, KILL_AT = 6, 2, 4

# Small and quick: no seg branch, short sequences, few media slots, random batches.
FAST = {"model.seg_branch": False, "data.source": "random", "data.seq_len": 48, "data.frame_slots": 3,
        "data.audio_slots": 2, "data.fbank_frames": 32, "data.num_distinct": 2, "train.global_batch": 4,
        "train.num_steps": STEPS, "checkpoint.every_steps": EVERY, "checkpoint.keep": 5,
        "checkpoint.async_save": True, "optim.schedule": "constant", "metrics.log_every": 1,
        "metrics.tensorboard": False, "metrics.progress_bar": False, "eval.at_end": False}


def declared(overrides: dict) -> dict:
    """The overrides whose keys the schema declares (configs grow; tests should not break)."""
    from crab_jax.config import schema as base

    ref = base.get_config()
    out = {}
    for key, value in overrides.items():
        node = ref
        try:
            for part in key.split("."):
                node = node[part]
        except (KeyError, AttributeError):
            continue
        out[key] = value
    return out


def cli_env(cache_dir, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=jax_env.session_cache_dir() or str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               XLA_FLAGS=jax_env.xla_flags())  # not the caller's device count
    env.pop(  # a stray setting from the caller would kill the reference runs
        "CRAB_JAX_KILL_AFTER_SAVE_STEP", None)
    env.update(extra)
    return env


_TRAIN = r"""
import sys
from tests.checkpoints.test_run import FAST, declared
from tests.train_helpers import small_config
from crab_jax.training.loop import train
train(small_config(**declared(FAST)), sys.argv[1])
"""


def train_cmd(workdir) -> list[str]:
    """The training command (the trainer's loop on the tests' small config); rerun = resume."""
    return [sys.executable, "-c", _TRAIN.format(repo=str(REPO)), str(workdir)]


def losses_by_line(workdir) -> list[tuple[int, float]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def committed_steps(workdir) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One persistent compile cache for the subprocess tests of this session (same programs, one compile)."""
    d = tmp_path_factory.getbasetemp() / "jax_cache_subprocess"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.run(train_cmd(workdir), cwd=REPO, env=cli_env(cache_dir), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, dict(losses_by_line(workdir))


@pytest.mark.slow
@pytest.mark.heavy  # the fixed point; CI runs the random-moment kill below (one of them keeps CI in budget)
def test_kill_9_during_async_save_resumes_from_last_committed(uninterrupted, tmp_path, cache_dir):
    _, want = uninterrupted
    assert sorted(want) == list(range(1, STEPS + 1))
    killed = subprocess.run(train_cmd(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=cli_env(cache_dir, CRAB_JAX_KILL_AFTER_SAVE_STEP=str(KILL_AT)))
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    before = losses_by_line(tmp_path)
    assert [s for s, _ in before] == list(range(1, KILL_AT + 1)), "the killed run logged up to its last step"
    committed = committed_steps(tmp_path)
    assert committed == list(range(EVERY, KILL_AT, EVERY)), (
        f"step {KILL_AT}'s save was killed while being written and must not be committed: {committed}")

    again = subprocess.run(train_cmd(tmp_path), cwd=REPO, env=cli_env(cache_dir), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    resumed_from = committed[-1]
    logged = losses_by_line(tmp_path)
    # one row per step: the killed run's rows past the resumed step were dropped on resume
    assert [s for s, _ in logged] == list(range(1, STEPS + 1)), logged
    assert logged[:resumed_from] == before[:resumed_from]
    for step, loss in before + logged:  # every logged step, the re-run ones too, equals the uninterrupted run
        assert loss == want[step], f"step {step}: {loss} != uninterrupted {want[step]} (bit-exact on CPU)"
    assert committed_steps(tmp_path)[-1] == STEPS


_EIGHT = r"""
import json, sys
import jax, numpy as np
from tests.train_helpers import small_config
from tests.checkpoints.test_run import FAST, declared
from crab_jax.checkpoints.run import Checkpointer, restore_params
from crab_jax.config.sections import RunConfig
from crab_jax.training.setup import build_setup
assert jax.device_count() == 8, jax.device_count()
c = small_config(**declared(FAST), **{{"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2}})
setup, _, _ = build_setup(c)
src = Checkpointer({src!r}, async_save=False)
step = src.latest_step()
# Only params / opt_state / step / rng are checkpointed: no need to build (and compile) the frozen weights.
state, _ = src.restore(step, setup.abstract, setup.abstract.replace(frozen=None, rng_vars=None))
src.close()
leaves = jax.tree_util.tree_leaves_with_path(state.params)
spread = [jax.tree_util.keystr(p) for p, x in leaves if len(x.sharding.device_set) == 8 and not x.is_fully_replicated]
assert spread, "no parameter is sharded over the 8 devices"
flat = {{jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in leaves}}
np.savez({npz!r}, **flat)
dst = Checkpointer({dst!r}, async_save=True)
dst.save(step, state, data_state=None, config_dict=RunConfig.from_config(c).as_dict(), force=True)
dst.close()
print("RESULT", json.dumps({{"step": step, "sharded": len(spread), "total": len(leaves)}}))
"""


def _flat_params(params) -> dict:
    import jax

    return {jax.tree_util.keystr(p): np.asarray(jax.device_get(x))
            for p, x in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.slow  # two training subprocesses (compile cached across this module)
def test_kill_9_at_a_random_moment_of_a_save_resumes(uninterrupted, tmp_path, cache_dir):
    """Seed 0 of tests/reliability/test_kill_during_save.py (ten seeds there, under -m heavy)."""
    from tests.reliability.test_kill_during_save import check_resumes_like_uninterrupted

    check_resumes_like_uninterrupted(0, uninterrupted, tmp_path, cache_dir)


def test_checkpoint_moves_from_1_to_8_devices_and_back(uninterrupted, tmp_path, cache_dir):
    from crab_jax.checkpoints.run import restore_params
    from crab_jax.training.setup import build_setup

    src, _ = uninterrupted
    npz, dst = tmp_path / "on8.npz", tmp_path / "saved_on_8"
    script = _EIGHT.format(repo=str(REPO), src=str(src / "checkpoints"), npz=str(npz), dst=str(dst))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=cli_env(cache_dir, XLA_FLAGS=jax_env.xla_flags("--xla_force_host_platform_device_count=8")))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[len("RESULT"):])
    assert result["step"] == STEPS and result["sharded"] > 0, result

    setup, _, _ = build_setup(small_config(**declared(FAST)))  # this process: 1 device
    written_on_1 = _flat_params(restore_params(src / "checkpoints", setup.abstract.params))
    back_on_1 = _flat_params(restore_params(dst, setup.abstract.params))
    on_8 = dict(np.load(npz))
    assert set(written_on_1) == set(on_8) == set(back_on_1)
    for name, value in written_on_1.items():
        np.testing.assert_array_equal(on_8[name], value, err_msg=f"{name}: 1 -> 8 devices")
        np.testing.assert_array_equal(back_on_1[name], value, err_msg=f"{name}: 8 -> 1 device")
    assert any(np.abs(v).sum() > 0 for v in written_on_1.values())


def test_mangled_gs_url_is_rejected_with_the_reason():
    import pathlib

    from crab_jax.io.paths import as_path

    assert str(as_path("gs://bucket/run/checkpoints")) == "gs://bucket/run/checkpoints"
    with pytest.raises(ValueError, match="collapsed"):
        as_path(pathlib.Path("gs://bucket/run") / "checkpoints")
