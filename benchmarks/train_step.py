"""Train-step time of I-LoRA vs plain LoRA vs the frozen model (ratios), tokens/s and MFU.

    python -m benchmarks.train_step                       # CPU: tiny Crab with a wider LLM (defaults)
    python -m benchmarks.train_step --config configs/gpu.py --batch 4 --seq_len 2048 \
        --config.train.micro_batches=1                    # one H100 / H200: the 7B recipe in bf16

The real train step (``crab_jax.training.step``: forward, loss, backward, AdamW, donation) of
three models that differ only in their adapters, on the same random batch:

  ilora   the config's I-LoRA (k heads, router) with LoRA + projectors trainable (the recipe)
  lora    the same with k = 1: the router's softmax over one head is 1, so this is plain LoRA
          (plus a 1-wide router matmul)
  frozen  no adapters (plain linears), projectors trainable

On the CPU the variants are timed interleaved, step by step, in one process (machine noise
hits all three alike); on an accelerator one after the other (three 7B states may not fit).
MFU = LLM training FLOPs per token (``crab_jax.training.metrics.llm_flops_per_token``: 6 N per
token over the frozen and trainable weights with attention, 2 N_trainable for the weight
gradients) x real tokens / step time / peak. Peak: the device table of ``crab_jax.training.metrics``
(H100 989 TFLOP/s bf16 dense ...); on the CPU none exists, so the rate one large fp32 matmul
reaches here is measured and used (CPU "MFU" = fraction of what XLA:CPU reaches on a matmul).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = ("ilora", "lora", "frozen")


def measured_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an ``n x n`` fp32 matmul on the default device (the CPU's reference "peak")."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(times)


def variant_config(base, variant: str):
    c = base.copy_and_resolve_references()
    if variant == "lora":
        c.model.lora.num_heads = 1
    elif variant == "frozen":
        c.model.lora.targets = ()
        c.trainable = tuple(p for p in c.trainable if "lora" not in p)
    return c


def crab_config(config, args):
    """The run's CrabConfig; on the CPU the tiny preset with ``--hidden`` / ``--layers`` for the LLM."""
    from crab_jax.config.sections import RunConfig
    from crab_jax.families.crab.presets import apply_run_options, tiny_crab_config
    from crab_jax.training.setup import resolve, run_model_config

    if config.model.preset != "tiny":
        return run_model_config(*resolve(config))
    cfg = tiny_crab_config(hidden=args.hidden, lora_heads=int(config.model.lora.num_heads))
    llama = dataclasses.replace(cfg.llama, intermediate_size=int(args.hidden * 11008 / 4096) // 8 * 8,
                                num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                                num_key_value_heads=args.hidden // 64)
    return apply_run_options(dataclasses.replace(cfg, llama=llama), RunConfig.from_config(config).model)


class Runner:
    """One variant: sharded state, compiled step, the global batch."""

    def __init__(self, config, args, variant: str):
        from crab_jax.data.sources import train_iterator
        from crab_jax.parallel.mesh import to_global
        from crab_jax.training.setup import build_setup, resolve
        from crab_jax.training.step import batch_shardings, jit_train_step, make_train_step

        self.variant = variant
        crab_cfg = crab_config(config, args)
        run, family = resolve(config)
        setup, _, _ = build_setup(run, model_cfg=crab_cfg, steps=1000)
        local = next(train_iterator(run, family, crab_cfg, None, progress=False))
        shapes = {k: np.shape(v) for k, v in local.items()}
        self.batch = to_global(local, batch_shardings(shapes, setup.mesh))
        self.tokens = float(np.asarray(local["attention_mask"]).sum())
        step = make_train_step(setup, micro_batches=int(config.train.micro_batches),
                               with_seg=bool(config.model.seg_branch), num_tasks=len(config.data.tasks),
                               router_groups=int(config.metrics.router_layer_groups))
        self.step_fn = jit_train_step(setup, step, shapes)
        self.state = setup.init_fn()
        t0 = time.perf_counter()
        self.step_fn = self.step_fn.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.flops_per_token = family.flops(crab_cfg, shapes["input_ids"][1], setup.trainable_paths).per_token
        self.trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setup.abstract.params))
        self.times: list[float] = []
        self.run_once()  # warm-up (allocation, first transfer)

    def run_once(self) -> float:
        t0 = time.perf_counter()
        self.state, aux = self.step_fn(self.state, self.batch)
        jax.block_until_ready(aux)
        return time.perf_counter() - t0

    def time(self, n: int) -> None:
        self.times += [self.run_once() for _ in range(n)]


def benchmark(base, args) -> dict:
    """``base``: the run config (any ``--config.x=y`` applied); ``args``: the benchmark's own flags."""
    from crab_jax.training.metrics import peak_flops_per_device

    from crab_jax.families.crab.recipes import STAGES

    base.trainable = STAGES["finetune"]["trainable"]  # projectors + LoRA (the frozen variant drops LoRA)
    base.data.source = "random"
    base.data.seq_len = args.seq_len
    base.train.global_batch = args.batch
    base.eval.at_end = False
    on_cpu = jax.default_backend() == "cpu"
    peak = peak_flops_per_device(float(base.metrics.peak_flops_per_device))
    peak_kind = "device table / config"
    if peak <= 0:
        peak, peak_kind = measured_matmul_peak(), "measured fp32 matmul"
    runners = {}
    if on_cpu:
        runners = {v: Runner(variant_config(base, v), args, v) for v in args.variants}
        for _ in range(args.steps):
            for r in runners.values():
                r.time(1)
    else:
        for v in args.variants:
            r = Runner(variant_config(base, v), args, v)
            r.time(args.steps)
            r.state = None
            runners[v] = r
            gc.collect()
    ref = "lora" if "lora" in runners else args.variants[0]
    n_dev = jax.device_count()
    out = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "devices": n_dev,
           "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "peak_flops_per_device": peak,
           "peak_kind": peak_kind, "variants": {}}
    ref_t = statistics.median(runners[ref].times)
    for v, r in runners.items():
        t = statistics.median(r.times)
        out["variants"][v] = {
            "step_s": t, "vs_" + ref: t / ref_t, "tokens_per_s": r.tokens / t,
            "mfu": r.flops_per_token * r.tokens / t / (n_dev * peak), "compile_s": r.compile_s,
            "trainable_params": r.trainable, "flops_per_token": r.flops_per_token}
    return out


def define_flags():
    from absl import flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config file[:variant]; "
                                             "override keys with --config.a.b=v.", lock_config=True)
    f = dict(
        batch=flags.DEFINE_integer("batch", 4, "Global batch."),
        seq_len=flags.DEFINE_integer("seq_len", 256, "Tokens per sample."),
        hidden=flags.DEFINE_integer("hidden", 512, "Tiny preset only: LLM width (heads of 64)."),
        layers=flags.DEFINE_integer("layers", 4, "Tiny preset only: LLM decoder layers."),
        steps=flags.DEFINE_integer("steps", 10, "Timed steps per variant (after one warm-up)."),
        variants=flags.DEFINE_list("variants", list(VARIANTS), "Subset of " + ",".join(VARIANTS) + "."),
        json=flags.DEFINE_bool("json", False, "Print only the JSON result."))
    return config, f


def main(argv) -> None:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    args = argparse.Namespace(**{k: v.value for k, v in _FLAGS.items()})
    args.variants = tuple(args.variants)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise app.UsageError(f"--variants: unknown {sorted(unknown)}; known {VARIANTS}")
    out = benchmark(_CONFIG.value, args)
    if not args.json:
        ref = "lora" if "lora" in out["variants"] else args.variants[0]
        print(f"{out['device']} x{out['devices']}, batch {out['batch']} x {out['seq_len']} tokens, "
              f"median of {out['steps']} steps; peak {out['peak_flops_per_device']:.3g} FLOP/s ({out['peak_kind']})")
        print(f"| variant | step s | vs {ref} | tokens/s | MFU | trainable params | compile s |")
        print("|---|---|---|---|---|---|---|")
        for v, e in out["variants"].items():
            print(f"| {v} | {e['step_s']:.4f} | {e['vs_' + ref]:.3f} | {e['tokens_per_s']:.0f} | {e['mfu']:.3f} | "
                  f"{e['trainable_params']:,} | {e['compile_s']:.1f} |")
    print(json.dumps(out))


if __name__ == "__main__":
    from absl import app

    _CONFIG, _FLAGS = define_flags()
    app.run(main)
