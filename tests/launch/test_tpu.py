"""``launch/tpu.py``: the gcloud commands of a Cloud TPU batch job (dry run), and flag errors."""

from __future__ import annotations

import shlex

import pytest

from launch import tpu

BASE = ["run", "--name", "crab-ft", "--project", "my-proj", "--zone", "us-central2-b", "--accelerator", "v4-32",
        "--workdir", "gs://bucket/runs/ft", "--dry-run"]


def dry_run(argv, capsys) -> list[list[str]]:
    assert tpu.main(argv) == 0
    out = capsys.readouterr().out
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def test_dry_run_prints_the_whole_flow_in_order(capsys):
    cmds = dry_run(BASE + ["--spot", "--delete-when-done", "--", "--config.train.num_steps=1000"], capsys)
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    verbs = [" ".join(c[1:5]) for c in gcloud]
    assert verbs == ["compute tpus queued-resources create", "compute tpus queued-resources describe",
                     "compute tpus tpu-vm scp", "compute tpus tpu-vm ssh", "compute tpus tpu-vm ssh",
                     "compute tpus queued-resources delete"], verbs
    create = gcloud[0]
    assert "crab-ft" in create and "--node-id=crab-ft-node" in create and "--spot" in create
    assert {"--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--zone=us-central2-b",
            "--project=my-proj"} <= set(create)
    for c in gcloud[2:5]:
        assert "--worker=all" in c and "crab-ft-node" in " ".join(c)
    install = gcloud[3][-1]
    assert install.startswith("--command=") and "pip install" in install and ".[tpu]" in install
    train = shlex.split(gcloud[4][-1][len("--command="):].split("&&", 1)[1])
    assert train[:3] == ["python3", "-m", "crab_jax.train"]
    assert {"--config=configs/tpu_v4.py:finetune", "--workdir=gs://bucket/runs/ft",
            "--config.distributed.initialize=always", "--config.train.num_steps=1000"} <= set(train)
    assert "--force" in gcloud[-1]


def test_on_demand_is_the_default_and_reserved_is_a_flag(capsys):
    create = dry_run(BASE, capsys)[1]
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert "--spot" not in create and "--reserved" not in create
    create = dry_run(BASE + ["--reserved"], capsys)[1]
    assert "--reserved" in create


def test_runtime_version_follows_the_generation(capsys):
    argv = [a if a != "v4-32" else "v5litepod-16" for a in BASE]
    create = dry_run(argv, capsys)[1]
    assert "--runtime-version=v2-alpha-tpuv5-lite" in create and "--accelerator-type=v5litepod-16" in create


@pytest.mark.parametrize("change, message", [
    ({"--workdir": "/tmp/run"}, "must be a gs://BUCKET/path folder"),
    ({"--accelerator": "v5e-8"}, "v5e is 'v5litepod-N' in gcloud"),
    ({"--accelerator": "tpu"}, "expected a Cloud TPU accelerator type"),
    ({"--name": "Crab_FT"}, "lower-case letters"),
    ({"--config": "configs/nope.py"}, "no file configs/nope.py"),
])
def test_bad_flags_fail_with_a_clear_message(change, message, capsys):
    argv = list(BASE)
    for flag, value in change.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    with pytest.raises(SystemExit) as e:
        tpu.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_spot_and_reserved_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        tpu.main(BASE + ["--spot", "--reserved"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_workdir_and_config_are_not_passed_twice(capsys):
    with pytest.raises(SystemExit):
        tpu.main(BASE + ["--", "--workdir=gs://other"])
    assert "set it with this script's own --workdir" in capsys.readouterr().err


def test_a_failure_on_a_healthy_slice_is_not_retried():
    """The restart loop: a failed train command on an ACTIVE slice stops; a lost slice is recreated."""
    job = tpu.job_from_args(tpu.build_parser().parse_args(BASE))
    lines: list[str] = []

    class Fake(tpu.Gcloud):
        def __init__(self, states, train_rcs):
            super().__init__(dry_run=False, out=lines.append)
            self.states, self.train_rcs = list(states), list(train_rcs)

        def run(self, cmd, *, check=True):
            line = cmd if isinstance(cmd, str) else shlex.join(cmd)
            lines.append(line)
            return self.train_rcs.pop(0) if "crab_jax.train" in line else 0

        def state(self, job):
            return self.states.pop(0)

    # preempted once (SUSPENDED), recreated, then finished
    g = Fake(states=["NOT_FOUND", "ACTIVE", "SUSPENDED", "SUSPENDED", "ACTIVE"], train_rcs=[255, 0])
    tpu.run_job(g, job, max_restarts=3, poll=0, delete_when_done=False)
    creates = [x for x in lines if "queued-resources create" in x]
    deletes = [x for x in lines if "queued-resources delete" in x]
    assert len(creates) == 2 and len(deletes) == 1
    # a crash with the slice still ACTIVE: stop, do not loop
    g = Fake(states=["ACTIVE", "ACTIVE", "ACTIVE"], train_rcs=[1])
    with pytest.raises(tpu.LaunchError, match="healthy slice"):
        tpu.run_job(g, job, max_restarts=3, poll=0, delete_when_done=False)
