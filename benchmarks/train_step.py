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
MFU = LLM training FLOPs per token (``crab_jax.families.crab.flops``: ``2 fwd + 2 N_t`` over the
frozen and trainable weights with attention) x real tokens / step time / peak. Peak: the device
table of ``crab_jax.training.metrics`` (H100 989 TFLOP/s bf16 dense ...); on the CPU none exists,
so the rate one large fp32 matmul reaches here is measured and used (CPU "MFU" = fraction of
what XLA:CPU reaches on a matmul). Timing, peak and table: :mod:`benchmarks.step_timing`
(shared with the Crab+ benchmark ``benchmarks/thinker_step.py``).
"""

from __future__ import annotations

import dataclasses

from benchmarks.step_timing import Runner, benchmark as time_benchmark, run_cli

VARIANTS = ("ilora", "lora", "frozen")


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


def benchmark(base, args) -> dict:
    """``base``: the run config (any ``--config.x=y`` applied); ``args``: the benchmark's own flags."""
    from crab_jax.families.crab.recipes import STAGES

    base.trainable = STAGES["finetune"]["trainable"]  # projectors + LoRA (the frozen variant drops LoRA)
    base.data.source = "random"
    base.data.seq_len = args.seq_len
    base.train.global_batch = args.batch
    base.eval.at_end = False

    def make(variant: str) -> Runner:
        config = variant_config(base, variant)
        return Runner(config, crab_config(config, args), variant)

    return time_benchmark(base, make, args.variants, args.steps, "lora", batch=args.batch, seq_len=args.seq_len)


if __name__ == "__main__":
    run_cli(default_config="configs/tiny.py", variants=VARIANTS, batch=4, seq_len=256, steps=10,
            extra_flags=lambda flags: {}, run=benchmark,
            title=lambda out: f"Crab train step, batch {out['batch']} x {out['seq_len']} tokens")
