"""Reference vs fused attention (``model.attention``): forward + backward time and XLA's temporary
memory, as ratios measured in one run.

    python -m benchmarks.attention                                  # CPU, fp32, 2 x 1024 tokens
    python -m benchmarks.attention --dtype bfloat16 --seq 4096      # on a GPU (cuDNN flash attention)

Shapes are one LLaMA-7B-like attention call with GQA off (32 heads of 128) unless overridden;
causal + left-padding mask as the decoder passes it. Both variants are jitted, interleaved and
timed in the same process; the memory is the compiled program's temporaries (XLA's
``memory_analysis``), the figure that bounds samples per chip.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from crab_jax.models.attention import dot_product_attention


def build(batch, seq, heads, kv_heads, head_dim, dtype, masked=True):
    rng = jax.random.key(0)
    kq, kk, kv, kc = jax.random.split(rng, 4)
    q = jax.random.normal(kq, (batch, seq, heads, head_dim), dtype)
    k = jax.random.normal(kk, (batch, seq, kv_heads, head_dim), dtype)
    v = jax.random.normal(kv, (batch, seq, kv_heads, head_dim), dtype)
    cot = jax.random.normal(kc, q.shape, dtype)
    valid = jnp.arange(seq)[None, :] >= jnp.asarray([0, seq // 4] * batch)[:batch, None]   # left padding
    mask = jnp.tril(jnp.ones((seq, seq), bool))[None, None] & valid[:, None, None, :] if masked else None

    def step(implementation):
        def f(q, k, v, mask, cot):
            out = dot_product_attention(q, k, v, mask=mask, implementation=implementation)
            return jnp.vdot(out.astype(jnp.float32), cot.astype(jnp.float32))
        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))

    return (q, k, v, mask, cot), {name: step(name) for name in ("reference", "fused")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-mask", action="store_true", help="no mask (the encoders' attention, e.g. CLIP: --batch 30 --seq 257 --heads 4 --kv-heads 4 --head-dim 8)")
    a = p.parse_args(argv)
    args, steps = build(a.batch, a.seq, a.heads, a.kv_heads, a.head_dim, jnp.dtype(a.dtype), not a.no_mask)
    temp = {}
    for name, fn in steps.items():
        compiled = fn.lower(*args).compile()
        temp[name] = compiled.memory_analysis().temp_size_in_bytes
        jax.block_until_ready(fn(*args))  # warm
    ref = steps["reference"](*args)
    fused = steps["fused"](*args)
    max_err = max(float(jnp.abs(r.astype(jnp.float32) - f.astype(jnp.float32)).max() / jnp.abs(r).max())
                  for r, f in zip(ref, fused))
    times = {name: [] for name in steps}
    for _ in range(a.repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    med = {n: float(np.median(t)) for n, t in times.items()}
    report = {
        "backend": jax.default_backend(), "shape": dict(batch=a.batch, seq=a.seq, heads=a.heads, kv_heads=a.kv_heads,
                                                       head_dim=a.head_dim, dtype=a.dtype),
        "median_s": med, "fused_speedup": med["reference"] / med["fused"],
        "temp_bytes": temp, "fused_temp_ratio": temp["fused"] / max(temp["reference"], 1),
        "grad_max_rel_diff": max_err,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
