"""Building blocks shared by every component (torch-named parameters, logical axes).

Parameter names mirror ``torch.nn`` so converters are near-identity maps: a ``Linear``
holds ``weight`` and ``bias``, a norm holds ``weight`` and ``bias``. Layouts are the JAX
ones (``Linear.weight`` is ``[in, out]``); the converter tables transpose.
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.parallel.sharding import param

Axes = tuple[str | None, ...]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(name):
    """A dtype from its config name (``"bfloat16"``); dtypes pass through."""
    if isinstance(name, str):
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; known: {sorted(DTYPES)}")
        return DTYPES[name]
    return name


def normal_init(stddev: float = 0.02):
    def init(key, shape, dtype):
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def fan_in_init(key, shape, dtype):
    """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) over all but the last axis (torch default)."""
    fan_in = math.prod(shape[:-1]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def zeros_init(key, shape, dtype):
    del key
    return jnp.zeros(shape, dtype)


def ones_init(key, shape, dtype):
    del key
    return jnp.ones(shape, dtype)


class Linear(nnx.Module):
    """``y = x @ weight + bias``; ``weight`` is ``[in, out]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        axes: Axes = ("embed", "mlp"),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        kernel_init=fan_in_init,
    ):
        self.in_features, self.out_features = in_features, out_features
        self.dtype = dtype
        self.weight = param(kernel_init, rngs.params(), (in_features, out_features), axes, param_dtype)
        self.bias = (
            param(zeros_init, rngs.params(), (out_features,), (axes[-1],), param_dtype)
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., in] -> [..., out]``."""
        x = x.astype(self.dtype)
        y = jnp.dot(x, self.weight[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with torch's ``weight`` / ``bias``, statistics in float32."""

    def __init__(self, dim: int, *, eps: float = 1e-5, use_bias: bool = True, axis_name="norm",
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = param(ones_init, rngs.params(), (dim,), (axis_name,), param_dtype)
        self.bias = param(zeros_init, rngs.params(), (dim,), (axis_name,), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(dtype)


class RMSNorm(nnx.Module):
    """LLaMA RMSNorm: normalise in float32, cast back, then scale (HF order)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = param(ones_init, rngs.params(), (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), -1, keepdims=True) + self.eps)
        return self.weight[...].astype(dtype) * h.astype(dtype)


class Embed(nnx.Module):
    """Embedding table ``weight`` ``[num, dim]`` (torch layout, no transpose)."""

    def __init__(self, num: int, dim: int, *, axes: Axes = ("vocab", "embed"),
                 param_dtype=jnp.float32, rngs: nnx.Rngs, init=normal_init(0.02)):
        self.num, self.dim = num, dim
        self.weight = param(init, rngs.params(), (num, dim), axes, param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """``[...] int -> [..., dim]``."""
        return jnp.take(self.weight[...], ids, axis=0)


def gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": gelu_exact,
    "gelu_exact": gelu_exact,
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu_tanh": gelu_tanh,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError as e:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from e


class Conv2d(nnx.Module):
    """torch ``Conv2d`` on channels-last ``[n, h, w, in]``; ``weight`` is HWIO ``[k, k, in, out]``.

    ``dtype`` None computes in the input's dtype (the weight is cast to it), else the input
    is cast to ``dtype`` first. ``axes`` are the logical axes of ``weight`` (HWIO order).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, *, stride: int = 1, padding: int = 0,
                 use_bias: bool = True, axes: Axes = ("conv", "conv", "channels", "channels"), dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stride, self.padding, self.dtype = stride, padding, dtype
        self.weight = param(fan_in_init, rngs.params(), (kernel, kernel, in_ch, out_ch), axes, param_dtype)
        self.bias = param(zeros_init, rngs.params(), (out_ch,), (axes[-1],), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[n, h, w, in] -> [n, h', w', out]``."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        pad = ((self.padding, self.padding), (self.padding, self.padding))
        y = jax.lax.conv_general_dilated(x, self.weight[...].astype(x.dtype), window_strides=(self.stride, self.stride),
                                         padding=pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y
