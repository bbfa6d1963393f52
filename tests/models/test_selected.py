"""map_selected: a per-sample function on the selected samples only, chunk by chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crab_jax.models.selected import map_selected, map_slots


def _fn(x):
    return {"y": jnp.tanh(x["a"]) * x["b"][:, None], "s": (x["a"] ** 2).sum(-1)}


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_values_and_gradients_equal_the_full_batch_where_selected(chunk):
    rng = np.random.default_rng(0)
    b = 5
    inputs = {"a": jnp.asarray(rng.normal(size=(b, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=b), jnp.float32)}
    selected = jnp.asarray([False, True, False, True, True])
    keep = np.asarray(selected)
    calls = []

    def counted(x):
        calls.append(1)
        return _fn(x)

    got = jax.jit(lambda x, s: map_selected(counted, s, x, chunk))(inputs, selected)
    ref = _fn(inputs)
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k])[keep], np.asarray(ref[k])[keep], rtol=1e-6)
        assert not np.any(np.asarray(got[k])[~keep])

    weights = jnp.asarray(rng.normal(size=(b, 4)), jnp.float32)
    loss = lambda x, f: jnp.sum(f(x)["y"] * weights) + jnp.sum(f(x)["s"] * jnp.asarray(keep, jnp.float32))
    g_sel = jax.grad(lambda x: loss(x, lambda y: map_selected(_fn, selected, y, chunk)))(inputs)
    g_ref = jax.grad(lambda x: loss(x, lambda y: jax.tree.map(
        lambda v: jnp.where(selected.reshape((b,) + (1,) * (v.ndim - 1)), v, 0.0), _fn(y))))(inputs)
    for k in g_ref:
        np.testing.assert_allclose(g_sel[k], g_ref[k], rtol=1e-6, atol=1e-7)


def test_unselected_chunks_are_skipped():
    """Chunks without a selected sample do not run ``fn`` (observed through a host callback)."""
    ran = []

    def fn(x):
        jax.debug.callback(lambda: ran.append(1))
        return x * 2

    x = jnp.arange(6.0).reshape(6, 1)
    out = jax.jit(lambda x, s: map_selected(fn, s, x, 2))(x, jnp.asarray([False, False, True, False, False, False]))
    jax.effects_barrier()
    assert len(ran) == 1  # one chunk of three ran
    np.testing.assert_array_equal(np.asarray(out)[:, 0], [0, 0, 4, 0, 0, 0])


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        map_selected(lambda x: x, jnp.ones(2, bool), jnp.ones((2, 1)), 0)


def test_map_slots_runs_fn_on_the_used_slots_of_each_sample():
    x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
    used = jnp.array([[True, False, True], [False, False, True]])
    out = map_slots(lambda v: {"y": v["x"] * 2.0 + 1.0}, used, {"x": x}, chunk=2)["y"]
    np.testing.assert_array_equal(out, np.where(np.asarray(used)[..., None], np.asarray(x) * 2.0 + 1.0, 0.0))
