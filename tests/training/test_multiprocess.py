"""Two JAX processes (``jax.distributed`` on localhost, gloo CPU collectives, one CPU device
each) train like one process: the loss trajectory equals the single-process run's, through a
preemption (SIGTERM seen by process 1 alone during step 3: both processes must save step 3 and
leave, agreed through a collective, else process 0 waits forever in step 4) and a restore (the
same command again). Held-out generation on the two processes scores like one process.

Exact comparison: the reference is ONE process with ONE device; the two-process run shards
the weights and batch over its 2 devices (fsdp=2) and sums partial products across processes,
so float sums run in another order: the losses must agree to 1e-4 relative (measured
differences are ~1e-6; a wrong shard, a missing all-reduce or a bad restore changes the loss
at the 2nd or 3rd digit). Both see the same global batches: each process feeds its half of
the rows.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.checkpoints.test_run import STEPS, cli_env, losses_by_line, train_cmd
from tests.train_helpers import REPO

LOSS_RTOL = 1e-4
LEAVE_AFTER = 3

_WORKER = r"""
import sys
pid, nproc, port, workdir, sigterm_at = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
import os, signal
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{{port}}", num_processes=nproc, process_id=pid, initialization_timeout=120)
assert jax.process_count() == nproc and jax.local_device_count() == 1
from tests.checkpoints.test_run import FAST, declared
from tests.train_helpers import small_config
from crab_jax.training.loop import train
from crab_jax.training.setup import resolve, run_model_config

c = small_config(**declared(FAST))
run, family = resolve(c)
cfg = run_model_config(run, family)
# The single-process run's global batches (seed*1000 + process 0), split by rows over the processes.
full = family.batch.random_batches(family.batch.spec(run.data, cfg, c.train.global_batch), cfg, c.seed * 1000,
                                   num_distinct=c.data.num_distinct, tasks=tuple(c.data.tasks))
rows = c.train.global_batch // nproc


class MyRows:
    calls = 0

    def __next__(self):
        self.calls += 1
        if pid == 1 and self.calls == sigterm_at:  # the batch of step `sigterm_at` (a fresh run)
            os.kill(os.getpid(), signal.SIGTERM)
        return {{k: v[pid * rows:(pid + 1) * rows] for k, v in next(full).items()}}

    def get_state(self):
        return full.get_state()

    def set_state(self, state):
        full.set_state(state)


history = train(c, workdir, data_iter=MyRows())
print("STEPS", [h["step"] for h in history], flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(script: str, args, cache_dir, tag: str, nproc: int = 2) -> list:
    """All processes of one job (``script pid nproc port *args``); each one's JSON after ``tag``."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(pid), str(nproc), str(port), *map(str, args)],
                              cwd=REPO, env=cli_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for pid in range(nproc)]
    outs = []
    try:
        for pid, p in enumerate(procs):
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"process {pid} failed:\n{err[-4000:]}"
            outs.append(json.loads(next(x for x in out.splitlines() if x.startswith(tag))[len(tag):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def run_two_processes(workdir, cache_dir, sigterm_at: int) -> list[list[int]]:
    """Both processes of one training job; returns the steps each ran."""
    return run_processes(_WORKER.format(repo=str(REPO)), (workdir, sigterm_at), cache_dir, "STEPS")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.getbasetemp() / "jax_cache_subprocess"  # shared with test_checkpointing
    d.mkdir(exist_ok=True)
    return d


@pytest.mark.slow  # two processes compile the 2-device program side by side: minutes on 2 busy cores
@pytest.mark.heavy  # ~210 s on 2 cores: outside CI's default selection (python -m pytest -m heavy)
def test_two_processes_train_like_one_through_save_and_restore(tmp_path, cache_dir):
    one = tmp_path / "one_process"
    proc = subprocess.run(train_cmd(one), cwd=REPO, env=cli_env(cache_dir), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    want = dict(losses_by_line(one))
    assert sorted(want) == list(range(1, STEPS + 1))

    two = tmp_path / "two_processes"
    first = run_two_processes(two, cache_dir, sigterm_at=LEAVE_AFTER)
    assert first == [list(range(1, LEAVE_AFTER + 1))] * 2, first  # both left after the same step
    second = run_two_processes(two, cache_dir, sigterm_at=-1)  # the same command again: resumes
    assert second == [list(range(LEAVE_AFTER + 1, STEPS + 1))] * 2, second

    got = losses_by_line(two)  # process 0 writes the metrics
    assert [s for s, _ in got] == list(range(1, STEPS + 1)), got
    print("1 process:", [want[s] for s in sorted(want)], "\n2 processes:", [x for _, x in got])
    for step, loss in got:
        assert abs(loss - want[step]) <= LOSS_RTOL * abs(want[step]), (step, loss, want[step])
    assert want[STEPS - 1] != want[1]  # the steps did train (same batch, two steps apart)



_EVAL_WORKER = r"""
import sys, json
pid, nproc, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import jax
if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{{port}}", num_processes=nproc, process_id=pid, initialization_timeout=120)
from tests.checkpoints.test_run import FAST, declared
from tests.train_helpers import small_config
from crab_jax.evaluation.generation import evaluate
from crab_jax.models.decoding import DecodeConfig
from crab_jax.training.setup import build_setup, initial_state, resolve, run_model_config

c = small_config(**declared(FAST))
run, family = resolve(c)
cfg = run_model_config(run, family)
setup, _, _ = build_setup(run, model_cfg=cfg, steps=1)
state = initial_state(run, setup)
model = setup.merge(state.params, state.frozen, state.rng_vars)
batch = {EVAL_BATCH}
full = family.batch.random_batches(family.batch.spec(run.data, cfg, batch), cfg, 4242, tasks=tuple(c.data.tasks))
rows = batch // nproc
local = [{{k: v[pid * rows:(pid + 1) * rows] for k, v in next(full).items()}} for _ in range({EVAL_BATCHES})]
dcfg = DecodeConfig(max_new_tokens={EVAL_TOKENS}, eos_token_id=2, pad_token_id=int(family.pad_token_id(cfg)))
samples = []
results = evaluate(family, model, cfg, local, None, tuple(c.data.tasks), dcfg=dcfg, records_out=samples,
                   mesh=setup.mesh)
print("EVAL", json.dumps({{"results": results, "texts": [s["text"] for s in samples],
                          "tasks": [s["task"] for s in samples]}}), flush=True)
"""
EVAL_BATCH, EVAL_BATCHES, EVAL_TOKENS = 4, 2, 6


@pytest.mark.slow  # three processes compile the generator
@pytest.mark.heavy  # ~110 s on 2 cores: outside CI's default selection (python -m pytest -m heavy)
def test_two_processes_evaluate_like_one(cache_dir):
    script = _EVAL_WORKER.format(EVAL_BATCH=EVAL_BATCH, EVAL_BATCHES=EVAL_BATCHES, EVAL_TOKENS=EVAL_TOKENS)
    (one,) = run_processes(script, (), cache_dir, "EVAL", nproc=1)
    two = run_processes(script, (), cache_dir, "EVAL", nproc=2)
    assert len(one["texts"]) == EVAL_BATCH * EVAL_BATCHES  # every row of every global batch was scored
    print("1 process:", one["results"], "\n2 processes:", two[0]["results"])
    for pid, got in enumerate(two):
        assert got["tasks"] == one["tasks"], pid
        assert got["texts"] == one["texts"], pid  # the same generation, row by row, on every process
        assert got["results"] == one["results"], pid
