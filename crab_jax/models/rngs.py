"""The ``nnx.Rngs`` every model is built with: flax's streams, with a counter update that traces in O(1).

``nnx.RngStream.__call__`` bumps its counter with ``count[...] += 1``. Under a trace, flax's
``Variable.set_value`` then probes ``value.sharding`` on the tracer, and JAX builds that
AttributeError's message by walking every equation traced so far (jax-ml/jax#40041). One probe
per drawn key makes building a model under ``jit`` / ``eval_shape`` quadratic in its size
(``benchmarks/model_build.py``: the tiny Crab's abstract build 2.19 s with flax's streams, 0.32 s
with these). :class:`RngStream` sets the counter whole (no index, so no probe); its keys and
counts are flax's.
"""

from __future__ import annotations

import jax
from flax import nnx


class RngStream(nnx.RngStream):
    """``nnx.RngStream`` whose draw is ``fold_in(key, count)`` then ``count + 1``, set without a probe.
    ``fork`` / ``split`` keep the type (flax builds them with ``type(self)``)."""

    def __call__(self) -> jax.Array:
        self.count._check_can_update()
        key = jax.random.fold_in(self.key.get_value(), self.count.get_value())
        self.count.set_value(self.count.get_value() + 1)
        return key


def make_rngs(seed: int) -> nnx.Rngs:
    """``nnx.Rngs(seed)`` (one ``default`` stream) whose streams are :class:`RngStream`: the same
    keys, so the same weights, as flax's."""
    rngs = nnx.Rngs(seed)
    for tag, stream in list(vars(rngs).items()):
        if isinstance(stream, nnx.RngStream):
            setattr(rngs, tag, RngStream(stream.key.get_value(), tag=tag))
    return rngs
