"""Benchmark: HF LLaMA-2-7B-shaped safetensors -> crab_jax Orbax -> HF safetensors.

Writes a synthetic checkpoint (random values, LLaMA-2-7B widths: hidden 4096, MLP 11008,
32 heads, vocabulary 32000; ``--layers`` decoder layers, 32 for the real size) as HF
safetensors shards, then runs ``to-jax`` and ``to-torch --format hf-llama`` each in a fresh
process and reports wall time and peak RSS as a ratio to the model's size in the output
dtype. The baseline RSS of a process that only imports the converter (jax, orbax, torch)
is measured too, and the ratio is also given without it (both: :mod:`benchmarks.rss`).

    python -m benchmarks.convert_llama7b --layers 8 --workdir /tmp/convert_bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from benchmarks.rss import baseline, measure, rss_table
from crab_jax.checkpoints.convert.writers import write_hf_shards

HIDDEN, MLP, HEADS, VOCAB = 4096, 11008, 32, 32000


def llama_specs(layers: int, dtype, seed: int):
    """(key, shape, dtype, read) of every tensor of the HF checkpoint, values drawn on read."""
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,)})
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
        shapes.update({p + "mlp.gate_proj.weight": (MLP, HIDDEN), p + "mlp.up_proj.weight": (MLP, HIDDEN),
                       p + "mlp.down_proj.weight": (HIDDEN, MLP)})

    def read(shape, i):
        rng = np.random.default_rng([seed, i])
        return (rng.standard_normal(shape, np.float32) * 0.02).astype(dtype)

    return [(k, s, np.dtype(dtype), (lambda s=s, i=i: read(s, i))) for i, (k, s) in enumerate(shapes.items())]


def write_source(folder: str, layers: int) -> int:
    os.makedirs(folder, exist_ok=True)
    specs = llama_specs(layers, np.float16, 0)
    write_hf_shards(folder, specs, max_shard_bytes=2 * 2**30)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": MLP, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": HEADS, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "hidden_act": "silu",
              "max_position_embeddings": 4096, "torch_dtype": "float16", "tie_word_embeddings": False}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return sum(int(np.prod(s)) for _, s, _, _ in specs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8, help="decoder layers (32 = LLaMA-2-7B; default 8 fits 24 GB)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="to-jax output dtype")
    p.add_argument("--workdir", default="/tmp/crab_convert_bench", help="scratch folder (deleted first)")
    args = p.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    src, ckpt, back = (os.path.join(args.workdir, n) for n in ("hf_src", "crab_ckpt", "hf_back"))
    t = time.time()
    params = write_source(src, args.layers)
    print(f"wrote synthetic source: {args.layers} layers, {params / 1e9:.2f} B params (fp16) in {time.time() - t:.0f} s")
    model_bytes = params * (2 if args.dtype == "bf16" else 4)
    base = baseline()
    rows = [("to-jax", model_bytes, measure(["to-jax", "--llama", src, "--out", ckpt, "--dtype", args.dtype])),
            ("to-torch hf-llama", model_bytes, measure(["to-torch", ckpt, "--format", "hf-llama", "--out", back]))]
    print(f"model size in {args.dtype}: {model_bytes / 2**30:.2f} GiB; import-only baseline RSS {base / 2**30:.2f} GiB")
    print("\n".join(rss_table(rows, base)))
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
