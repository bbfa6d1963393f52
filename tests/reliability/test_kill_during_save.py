"""``kill -9`` at a random moment while an asynchronous checkpoint save is being written.

tests/checkpoints/test_run.py kills at one fixed point (right after a save was scheduled); here
the moment is drawn: the training subprocess is polled until a save's temporary directory
appears under ``checkpoints/`` (Orbax writes ``<step>.orbax-checkpoint-tmp-*`` and renames it on
commit), then SIGKILLed after a seeded random delay, so the kill lands anywhere between the start
of the write and shortly after its commit. The same command again must resume from the last
committed step and log every step with exactly the losses of an uninterrupted run (bit-exact
on CPU), one row per step. Ten seeds here under ``-m heavy``; seed 0 runs in the default selection
from tests/checkpoints/test_run.py, which shares its uninterrupted reference run (one run fewer in CI).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time

import pytest

from tests.checkpoints import test_run
from tests.checkpoints.test_run import STEPS, cli_env, committed_steps, losses_by_line, train_cmd
from tests.train_helpers import REPO

MAX_DELAY_S = 0.5  # a tiny save takes ~0.1-0.5 s on 2 busy cores: delays up to this span it
POLL_S = 0.005
RUN_TIMEOUT_S = 300

# The uninterrupted reference run and the shared compile cache of the fixed-point kill test.
cache_dir, uninterrupted = test_run.cache_dir, test_run.uninterrupted


def _saving(workdir) -> bool:
    """A save is in flight: a non-committed (temporary) entry exists under checkpoints/."""
    d = workdir / "checkpoints"
    return d.exists() and any(not p.name.isdigit() for p in d.iterdir())


def kill_during_a_save(workdir, env, rng: random.Random) -> int | None:
    """Starts the training command, SIGKILLs it a random delay after a save began; the return code."""
    proc = subprocess.Popen(train_cmd(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        # Skip a random number of saves (0 .. all but the last) so every save is a target.
        skip = rng.randrange(STEPS // 2)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        seen = 0
        while proc.poll() is None and time.monotonic() < deadline:
            if _saving(workdir):
                if seen == skip:
                    time.sleep(rng.uniform(0.0, MAX_DELAY_S))
                    proc.send_signal(signal.SIGKILL)
                    break
                seen += 1
                while proc.poll() is None and _saving(workdir):  # let this save finish
                    time.sleep(POLL_S)
            time.sleep(POLL_S)
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGKILL), (proc.returncode, err[-3000:])
    return proc.returncode


def check_resumes_like_uninterrupted(seed, uninterrupted, workdir, cache_dir):
    _, want = uninterrupted
    rc = kill_during_a_save(workdir, cli_env(cache_dir), random.Random(seed))
    before = losses_by_line(workdir) if (workdir / "metrics.jsonl").exists() else []
    committed = committed_steps(workdir)
    for step, loss in before:  # the killed run's steps are the uninterrupted run's
        assert loss == want[step], (seed, step, loss, want[step])

    again = subprocess.run(train_cmd(workdir), cwd=REPO, env=cli_env(cache_dir), capture_output=True,
                           text=True, timeout=RUN_TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-4000:]
    logged = losses_by_line(workdir)
    assert [s for s, _ in logged] == list(range(1, STEPS + 1)), (seed, rc, committed, logged)
    resumed_from = committed[-1] if committed else 0
    assert logged[:resumed_from] == before[:resumed_from], "rows up to the resumed step are kept"
    for step, loss in logged:
        assert loss == want[step], f"seed {seed}, step {step}: {loss} != uninterrupted {want[step]}"
    assert committed_steps(workdir)[-1] == STEPS


@pytest.mark.slow
@pytest.mark.heavy  # ten kill/resume pairs: minutes on 2 cores, outside the default selection (-m heavy)
@pytest.mark.parametrize("seed", range(1, 11))
def test_kill_9_at_random_moments_of_saves_resumes(seed, uninterrupted, tmp_path, cache_dir):
    check_resumes_like_uninterrupted(seed, uninterrupted, tmp_path, cache_dir)
