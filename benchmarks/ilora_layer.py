"""I-LoRA layer vs plain LoRA vs frozen linear: forward + backward time, as ratios.

    python -m benchmarks.ilora_layer                      # CPU, fp32, small token count
    python -m benchmarks.ilora_layer --dtype bfloat16 --tokens 16384   # on a GPU

Shapes are LLaMA-7B projections (4096->4096, 4096->11008). The backward pass is taken
w.r.t. the trainable LoRA parameters and the layer input (what training needs: the frozen
weight gets no gradient). All variants are timed in the same run, interleaved, and
reported relative to plain LoRA.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.ilora import ILoRAConfig, ILoRALinear
from crab_jax.models.rngs import make_rngs


def frozen_fn(weight, x):
    return jnp.dot(x, weight)


def plain_lora_fn(weight, lora_a, lora_b, scaling, x):
    return jnp.dot(x, weight) + scaling * jnp.dot(jnp.dot(x, lora_a), lora_b)


def make_variants(d_in, d_out, tokens, r, heads, dtype):
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (tokens, d_in), dtype)
    cot = jax.random.normal(k2, (tokens, d_out), dtype)

    def ilora_variant(k):
        layer = ILoRALinear(d_in, d_out, ILoRAConfig(r=r, alpha=2 * r, num_heads=k, dropout=0.0),
                            dtype=dtype, param_dtype=dtype, rngs=make_rngs(0))
        layer.lora_B[...] = 0.01 * jax.random.normal(k3, layer.lora_B.shape, dtype)
        layer.eval()
        graphdef, frozen, trainable, rest = nnx.split(
            layer, lambda p, v: p[-1] in ("weight", "bias"), nnx.Param, ...)

        @jax.jit
        def step(frozen, trainable, rest, x, cot):
            def f(trainable, x):
                y = nnx.merge(graphdef, frozen, trainable, rest)(x)
                return jnp.vdot(y.astype(jnp.float32), cot.astype(jnp.float32))
            return jax.grad(f, argnums=(0, 1))(trainable, x)

        return lambda: step(frozen, trainable, rest, x, cot)

    w = jax.random.normal(k3, (d_in, d_out), dtype) / np.sqrt(d_in)
    a = jax.random.normal(k1, (d_in, r), dtype) / np.sqrt(d_in)
    b = 0.01 * jax.random.normal(k2, (r, d_out), dtype)

    # Everything is an argument: closed-over arrays would be constant-folded by XLA.
    @jax.jit
    def lora_step(w, a, b, x, cot):
        f = lambda a, b, x: jnp.vdot(plain_lora_fn(w, a, b, 2.0, x).astype(jnp.float32), cot.astype(jnp.float32))
        return jax.grad(f, argnums=(0, 1, 2))(a, b, x)

    @jax.jit
    def frozen_step(w, x, cot):
        f = lambda x: jnp.vdot(frozen_fn(w, x).astype(jnp.float32), cot.astype(jnp.float32))
        return jax.grad(f)(x)

    return {
        "frozen linear": lambda: frozen_step(w, x, cot),
        "plain LoRA": lambda: lora_step(w, a, b, x, cot),
        "I-LoRA k=1": ilora_variant(1),
        f"I-LoRA k={heads}": ilora_variant(heads),
    }


def bench(variants, repeats, inner):
    for fn in variants.values():  # compile + warm up
        jax.block_until_ready(fn())
    times = {name: [] for name in variants}
    for _ in range(repeats):  # interleave so drift hits every variant alike
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                out = fn()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / inner)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512, help="tokens per step (batch*seq)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--heads", type=int, default=3, help="I-LoRA B heads (k)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args()
    dtype = jnp.dtype(args.dtype)
    results = {}
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {args.dtype}, "
          f"tokens {args.tokens}, r {args.rank}, k {args.heads}")
    print("| shape | variant | time (ms) | vs plain LoRA |\n|---|---|---|---|")
    for d_in, d_out in [(4096, 4096), (4096, 11008)]:
        t = bench(make_variants(d_in, d_out, args.tokens, args.rank, args.heads, dtype), args.repeats, args.inner)
        base = t["plain LoRA"]
        for name, v in t.items():
            print(f"| {d_in}->{d_out} | {name} | {v * 1e3:.3f} | {v / base:.3f}x |")
        results[f"{d_in}->{d_out}"] = {name: v / base for name, v in t.items()}
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
