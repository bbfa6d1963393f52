"""Bad command lines of the absl commands (``crab_jax.train``, ``crab_jax.aot_compile``): one line on
stderr naming the key or path and the fix, exit status 2, before any JAX work: the workdir is not
made, and the training stack is never imported (each command runs with an import hook that makes
importing a ``crab_jax.training`` module fail loudly), so the answer comes in seconds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from absl import flags

from crab_jax.config.check import ConfigError
from crab_jax.config.command_line import check_config_arguments, config_arguments, parse_checked, workdir_error
from tests.train_helpers import REPO

TINY = str(REPO / "configs" / "tiny.py")

# sitecustomize for the commands: importing the training stack is an error (the command line must be
# refused before it; those imports cost ~10 s).
_NO_TRAINING_STACK = """
import sys

class _NoTrainingStack:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("crab_jax.training."):
            raise ImportError(f"{name} imported before the command line was checked (crab_jax.training)")
        return None

sys.meta_path.insert(0, _NoTrainingStack())
"""


@pytest.fixture(scope="module")
def no_training_stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_training_stack")
    (folder / "sitecustomize.py").write_text(_NO_TRAINING_STACK)
    return folder


@pytest.fixture(autouse=True)
def _env(no_training_stack, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(no_training_stack), str(REPO),
                                                                   os.environ.get("PYTHONPATH", "")])))


def run_command(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    return proc


def assert_one_line_usage_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--config.train.nonexistent=1"], ["train.nonexistent", "num_steps", "schema.py"]),
    (["--config.train.num_stesp=5"], ["train.num_stesp", "did you mean train.num_steps"]),
    (["--config.trian.num_steps", "5"], ["trian.num_steps", "did you mean train.num_steps"]),
    (["--config.train.num_steps=abc"], ["--config.train.num_steps=abc", "expects type int"]),
    (["--config", "configs/nope.py"], ["configs/nope.py", "no such config file", "configs/tiny.py"]),
    (["--config=configs/tpu_v4.py:nostage"], ["configs/tpu_v4.py", "nostage"]),
], ids=["unknown-key", "misspelt-key", "misspelt-section", "wrong-type", "missing-file", "bad-variant"])
def test_train_refuses_a_bad_config_argument_in_one_line(tmp_path, args, needles):
    workdir = tmp_path / "run"
    proc = run_command("crab_jax.train", "--workdir", str(workdir), *args)
    assert_one_line_usage_error(proc, *needles)
    assert not workdir.exists()  # nothing ran


def test_train_refuses_a_workdir_that_is_a_file_or_below_one(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    proc = run_command("crab_jax.train", "--workdir", str(afile))
    assert_one_line_usage_error(proc, str(afile), "is a file", "--workdir")
    proc = run_command("crab_jax.train", f"--workdir={afile}/run")
    assert_one_line_usage_error(proc, f"{afile}/run", "cannot be created", "--workdir")
    proc = run_command("crab_jax.train")
    assert_one_line_usage_error(proc, "--workdir is required")


def test_the_import_hook_catches_a_command_that_reaches_the_training_stack(tmp_path):
    proc = run_command("crab_jax.train", "--workdir", str(tmp_path / "run"), "--config.train.num_steps=1")
    assert proc.returncode != 0 and "imported before the command line was checked (crab_jax.training)" in proc.stderr


def test_aot_compile_refuses_an_unknown_key_in_one_line():
    proc = run_command("crab_jax.aot_compile", "--config.model.nonexistent=1")
    assert_one_line_usage_error(proc, "model.nonexistent")


def test_config_arguments_reads_every_absl_spelling():
    argv = ["prog", "--config", "a.py:v", "--config.train.num_steps=3", "-config.optim.lr", "0.1",
            "--noconfig.model.seg_branch", "--workdir=x", "--", "--config.not.a.flag=1"]
    assert config_arguments(argv) == ("a.py:v", ["train.num_steps", "optim.lr", "model.seg_branch"])
    assert config_arguments(["prog", "--config=b.py"]) == ("b.py", [])
    assert config_arguments(["prog"]) == (None, [])


def test_unknown_override_is_refused_before_any_flag_is_defined():
    with pytest.raises(ConfigError, match=r"--config\.data\.seq_lenn: .*did you mean data\.seq_len\?"):
        check_config_arguments(["prog", "--config.data.seq_lenn=3"], default_config=TINY)
    config = check_config_arguments(["prog", "--config.data.seq_len=3"], default_config=TINY)
    assert "seq_len" in config.data


def test_parse_checked_turns_absl_errors_into_one_line(tmp_path, monkeypatch):
    from ml_collections import config_flags

    argv = ["prog", f"--workdir={tmp_path}", "--config.train.num_steps=1.5"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags defines the override flags from sys.argv
    config = check_config_arguments(argv, default_config=TINY)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", TINY, "", flag_values=values, lock_config=True)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    with pytest.raises(ConfigError, match=r"^--config\.train\.num_steps=1\.5: .*expects type int") as e:
        parse_checked(argv, config, default_config=TINY, workdir_flag="workdir", flag_values=values)
    assert "\n" not in str(e.value)


def test_workdir_error(tmp_path):
    assert workdir_error(str(tmp_path)) is None
    assert workdir_error(str(tmp_path / "new" / "deeper")) is None
    assert workdir_error("gs://bucket/run") is None  # left to the object store
    (tmp_path / "f").write_text("")
    assert "is a file" in workdir_error(str(tmp_path / "f"))
    assert "cannot be created" in workdir_error(str(tmp_path / "f" / "run"))
