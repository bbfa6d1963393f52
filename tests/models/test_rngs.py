"""crab_jax.models.rngs: flax's keys, counts and weights, without a per-draw walk of the trace."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax._src.interpreters import partial_eval

from crab_jax.models.layers import Linear
from crab_jax.models.rngs import RngStream, make_rngs


def _draw(stream, n):
    return [jax.random.key_data(stream()) for _ in range(n)]


def test_streams_draw_flax_keys_and_counts():
    ours, theirs = make_rngs(3), nnx.Rngs(3)
    assert isinstance(ours["dropout"], RngStream) and isinstance(ours.params, RngStream)
    np.testing.assert_array_equal(_draw(ours["dropout"], 4), _draw(theirs["dropout"], 4))
    assert int(ours["dropout"].count.get_value()) == int(theirs["dropout"].count.get_value()) == 4
    forked, theirs_forked = ours["dropout"].fork(), theirs["dropout"].fork()
    assert type(forked) is RngStream
    np.testing.assert_array_equal(_draw(forked, 2), _draw(theirs_forked, 2))


def test_a_module_gets_the_weights_flax_rngs_give_it_under_jit():
    build = lambda make: nnx.state(Linear(4, 3, rngs=make(5)))
    ours, theirs = jax.jit(lambda: build(make_rngs))(), jax.jit(lambda: build(nnx.Rngs))()
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


def _origin_walks(make, monkeypatch) -> int:
    """How often building three Linears under eval_shape walks the trace for an error message."""
    calls = []
    original = partial_eval.DynamicJaxprTracer._origin_msg

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", counting)

    def build():
        rngs = make(0)
        return [Linear(4, 4, rngs=rngs) for _ in range(3)]

    nnx.eval_shape(build)
    monkeypatch.undo()
    return len(calls)


def test_a_draw_under_a_trace_does_not_walk_the_trace(monkeypatch):
    assert _origin_walks(nnx.Rngs, monkeypatch) >= 6  # flax's stream: one walk per draw
    assert _origin_walks(make_rngs, monkeypatch) == 0
