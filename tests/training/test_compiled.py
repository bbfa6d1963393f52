"""crab_jax.training.compiled: identical modules share one executable in a process."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from crab_jax.training import compiled as C


def _lowered(scale):
    def f(x):  # a fresh closure each call, as every train() builds its step
        return jnp.tanh(x) * scale

    return jax.jit(f).lower(jax.ShapeDtypeStruct((4,), jnp.float32))


def test_identical_modules_share_an_executable_and_others_do_not():
    C.clear()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    first = C.compile_once(_lowered(2.0), mesh)
    assert C.compile_once(_lowered(2.0), mesh) is first
    other = C.compile_once(_lowered(3.0), mesh)
    assert other is not first
    quick = C.compile_once(_lowered(2.0), mesh, {"xla_backend_optimization_level": 0})
    assert quick is not first
    x = jnp.arange(4, dtype=jnp.float32)
    np.testing.assert_allclose(first(x), np.tanh(np.arange(4)) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(other(x), np.tanh(np.arange(4)) * 3.0, rtol=1e-6)


def test_the_oldest_program_is_dropped_past_the_bound(monkeypatch):
    C.clear()
    monkeypatch.setattr(C, "MAX_PROGRAMS", 2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    first = C.compile_once(_lowered(1.0), mesh)
    C.compile_once(_lowered(2.0), mesh)
    C.compile_once(_lowered(3.0), mesh)
    assert C.compile_once(_lowered(1.0), mesh) is not first
