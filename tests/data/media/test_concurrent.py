"""crab_jax.data.media.concurrent: a sample's media decoded side by side."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media.concurrent import MEDIA_THREADS, run_side_by_side


def test_calls_run_at_the_same_time_and_results_keep_their_order():
    # Each call waits for all the others: run one after another they would time out.
    barrier = threading.Barrier(MEDIA_THREADS, timeout=10)
    calls = [lambda i=i: (barrier.wait(), i)[1] for i in range(MEDIA_THREADS)]
    assert run_side_by_side(calls) == list(range(MEDIA_THREADS))
    assert run_side_by_side([lambda: "alone"]) == ["alone"] and run_side_by_side([]) == []


def test_the_first_failure_in_call_order_is_raised_after_every_call_ended():
    ended = []

    def fail(name):
        def call():
            ended.append(name)
            raise BadRecordError(f"{name}.mp4", "cannot open video")
        return call

    def slow_ok():
        threading.Event().wait(0.2)
        ended.append("ok")
        return 1

    with pytest.raises(BadRecordError, match="a.mp4"):
        run_side_by_side([slow_ok, fail("a"), fail("b")])
    assert sorted(ended) == ["a", "b", "ok"]


def _in_child(queue):
    queue.put(run_side_by_side([lambda: 1, lambda: 2]))


def test_a_forked_worker_gets_its_own_threads():
    barrier = threading.Barrier(MEDIA_THREADS, timeout=10)  # every one of the parent's threads made before the fork
    run_side_by_side([barrier.wait] * MEDIA_THREADS)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(queue,))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and queue.get(timeout=5) == [1, 2]
