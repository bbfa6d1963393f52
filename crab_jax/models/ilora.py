"""I-LoRA: a frozen linear layer plus a router-mixed bank of LoRA up-projections.

Per token (Crab, ``peft_hyper/tuners/lora.py``)::

    g = softmax(x @ lora_route)                       # [.., k], float32
    y = x @ W + b + (alpha / r) * sum_h g_h * (dropout(x) @ lora_A) @ lora_B[h]

The head mix is ONE contraction over the stacked (head, rank) axes: the rank
activations are scaled by the gates (``[.., k, r]``) and contracted with ``lora_B``
(``[k, r, out]``) in a single matmul. No loop over heads, no k full-size outputs. With
``k == 1`` the softmax is 1 and this is plain LoRA.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.layers import Axes, Linear, fan_in_init, zeros_init
from crab_jax.parallel.sharding import param

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Name of the ``nnx.Intermediate`` holding the router gates ``[..., k]`` (float32) of a call.
GATES_INTERMEDIATE = "gates_seen"


@dataclasses.dataclass(frozen=True)
class ILoRAConfig:
    """I-LoRA hyper-parameters (Crab: r=8, alpha=16, k=3, dropout 0.05; Crab+: r=128, alpha=256)."""

    r: int = 8
    alpha: float = 16.0
    num_heads: int = 3  # k, the number of B heads ("lora_nums" in the original)
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class ILoRALinear(Linear):
    """Frozen ``weight`` [in, out] (+ ``bias``) of a :class:`Linear`, shared ``lora_A`` [in, r],
    stacked ``lora_B`` [k, r, out] and router ``lora_route`` [in, k]."""

    # When True, each call sows its gates as ``nnx.Intermediate`` GATES_INTERMEDIATE (collect
    # them with ``nnx.capture(fn, nnx.Intermediate)``). Off by default so inference keeps no
    # extra state; the trainer turns it on with :func:`record_router_gates`.
    record_gates: bool = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        cfg: ILoRAConfig,
        *,
        use_bias: bool = False,
        axes: Axes = ("embed", "mlp"),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, out_features, use_bias=use_bias, axes=axes, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        in_axis, out_axis = axes
        self.cfg = cfg
        self.scaling = cfg.scaling
        # fan_in_init on an [in, out] kernel is torch nn.Linear's default (kaiming_uniform, a=sqrt(5)).
        self.lora_A = param(fan_in_init, rngs.params(), (in_features, cfg.r), (in_axis, "lora_rank"), param_dtype)
        # B starts at zero so a fresh adapter leaves the frozen model unchanged (peft).
        self.lora_B = param(zeros_init, rngs.params(), (cfg.num_heads, cfg.r, out_features),
                            ("lora_heads", "lora_rank", out_axis), param_dtype)
        self.lora_route = param(fan_in_init, rngs.params(), (in_features, cfg.num_heads),
                                (in_axis, "lora_heads"), param_dtype)
        self.lora_dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def router_gates(self, x: jax.Array) -> jax.Array:
        """``[..., in] -> [..., k]`` softmax gates, computed in float32 then cast to x's dtype."""
        logits = jnp.dot(x.astype(jnp.float32), self.lora_route[...].astype(jnp.float32))
        return jax.nn.softmax(logits, axis=-1).astype(x.dtype)

    def __call__(self, x: jax.Array, *, return_gates: bool = False):
        """``[..., in] -> [..., out]`` (and the gates ``[..., k]`` if asked)."""
        y = super().__call__(x)
        x = x.astype(self.dtype)
        gates = self.router_gates(x)
        rank_act = jnp.dot(self.lora_dropout(x), self.lora_A[...].astype(self.dtype))  # [..., r]
        mixed = gates[..., :, None] * rank_act[..., None, :]  # [..., k, r]
        lora_out = jnp.einsum("...hr,hro->...o", mixed, self.lora_B[...].astype(self.dtype))
        y = y + (self.scaling * lora_out).astype(y.dtype)
        if self.record_gates:
            self.sow(nnx.Intermediate, GATES_INTERMEDIATE, gates.astype(jnp.float32))
        return (y, gates) if return_gates else y


def record_router_gates(module: nnx.Module, on: bool = True) -> int:
    """Turns gate sowing on/off in every :class:`ILoRALinear` of ``module``; returns how many."""
    count = 0
    for _, node in nnx.iter_graph(module):
        if isinstance(node, ILoRALinear):
            node.record_gates = on
            count += 1
    return count


# Containers of a tower's layer list in module paths (LLaMA / audio ``layers``, vision ``blocks``).
LAYER_LISTS = ("layers", "blocks")


def router_heads(module: nnx.Module) -> int:
    """The most heads of any :class:`ILoRALinear` in ``module`` (0: no I-LoRA layer)."""
    return max((node.cfg.num_heads for _, node in nnx.iter_graph(module) if isinstance(node, ILoRALinear)), default=0)


def layer_of(path) -> int | None:
    """The layer index in a module path (``(..., "layers", 3, ...)`` -> 3); None for a scanned
    stack (no index: its variables carry a leading ``[L]`` axis) or a path outside a layer list."""
    for i in range(len(path) - 1):
        if str(path[i]) in LAYER_LISTS and isinstance(path[i + 1], int):
            return int(path[i + 1])
    return None


def recorded_gates(intermediates, scope: str = "") -> list[tuple[tuple, jax.Array]]:
    """``(module path, gates)`` of every I-LoRA call sown in ``intermediates`` (``nnx.capture``'s
    ``nnx.Intermediate`` state) under the first path element ``scope`` (``""``: all), in path
    order. A path ends with the projection's name (``(..., "self_attn", "q_proj")``); gates are
    an unscanned layer's ``[rows..., k]`` or a scanned stack's ``[L, rows..., k]``, one entry per call."""
    out = []
    for path, var in nnx.to_flat_state(intermediates):
        if str(path[-1]) != GATES_INTERMEDIATE or (scope and str(path[0]) != scope):
            continue
        out.extend((tuple(path[:-1]), gates) for gates in var.get_value())
    return out


def projection(
    name: str,
    in_features: int,
    out_features: int,
    lora: ILoRAConfig | None,
    *,
    use_bias: bool = False,
    axes: Axes,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """An :class:`ILoRALinear` if ``name`` is an I-LoRA target, else a plain :class:`Linear`."""
    if lora is not None and name in lora.targets:
        return ILoRALinear(in_features, out_features, lora, use_bias=use_bias, axes=axes,
                           dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    return Linear(in_features, out_features, use_bias=use_bias, axes=axes, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)
