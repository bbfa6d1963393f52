"""How the test processes run XLA: quick CPU compiles and one compile cache for the whole session.

The suite is compile-bound (each tiny train step is ~20 s of XLA:CPU compilation and well under a
second of running). Two settings, for the tests only, cut that without changing what is tested:

- :data:`TEST_XLA_FLAGS`: the LLVM backend at its lowest optimisation level. XLA's HLO passes are
  unchanged (the same fusions, the same arithmetic, no fast-math either way); only the machine
  code is less optimised, which a test running two steps never notices. Users' runs keep XLA's
  defaults; ``benchmarks/`` never come through here.
- :func:`session_cache_dir`: JAX's persistent compilation cache in one folder for the session,
  shared by the xdist workers and the subprocesses the tests start, so a program that several
  tests build (the small trainer config's step, its initialiser) compiles once. The controller
  makes the folder (``pytest_configure``) and removes it at the end.
"""

from __future__ import annotations

import os

TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
# Set by the controlling pytest process; inherited by its workers and their subprocesses.
SESSION_CACHE_ENV = "CRAB_JAX_TEST_COMPILE_CACHE"


def xla_flags(*extra: str) -> str:
    """``XLA_FLAGS`` for a test process: :data:`TEST_XLA_FLAGS` and ``extra`` (e.g. a device count)."""
    return " ".join((*TEST_XLA_FLAGS, *extra))


def session_cache_dir() -> str:
    """The session's compilation cache folder ("" outside a pytest session that made one)."""
    return os.environ.get(SESSION_CACHE_ENV, "")


def apply_to_this_process() -> None:
    """Adds :data:`TEST_XLA_FLAGS` to ``XLA_FLAGS`` (before JAX starts its CPU backend)."""
    current = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(current + [f for f in TEST_XLA_FLAGS if f not in current])
