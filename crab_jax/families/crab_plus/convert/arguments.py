"""Crab+'s part of the ``crab-convert-weights`` command line: its sources, I-LoRA options,
export formats and the words of its ``--help`` (the CLI adds the generic rest)."""

from __future__ import annotations

import argparse

from crab_jax.checkpoints.convert.family_converter import ConverterTexts
from crab_jax.families.crab_plus.convert.to_jax import DEFAULT_LORA_DROPOUT
from crab_jax.families.crab_plus.convert.to_torch import FORMATS

TEXTS = ConverterTexts(
    description="""Convert Crab+ weights (the Qwen2.5-Omni thinker + I-LoRA) between the original's files and
crab_jax checkpoints.

A crab_jax checkpoint is a directory: <out>/params (Orbax PyTree of the parameters, keyed by
crab_jax paths = the thinker's torch module paths) and <out>/crab_plus_config.json (the model
config, which parts the params hold, and the HF config.json the base came with).

The original's files: the HF Qwen2.5-Omni directory (config.json + model.safetensors or shards +
model.safetensors.index.json; thinker.* keys, the talker.* / token2wav.* ones are skipped by name)
and Crab+'s finetune_weights.bin (the I-LoRA weights, base_model.model.* keys). Both are strict:
a missing, extra or mis-shaped tensor fails naming the key and both shapes.

subcommands:
  to-jax    --hf DIR and / or --adapter finetune_weights.bin -> a crab_jax checkpoint
  to-torch  a crab_jax checkpoint -> an HF directory (--format hf) or finetune_weights.bin (--format adapter)
  from-run  a crab_jax training run's weights over a converted base -> a crab_jax checkpoint
  inspect   list a checkpoint's tensors and how they match the mapping table
""",
    to_jax_epilog="""examples:
  # the released base and a Crab+ adapter (r and heads are read from the adapter's shapes; alpha is in no file)
  python -m tools.convert_weights --family crab_plus to-jax --out ckpt/crab_plus \\
      --hf Qwen2.5-Omni-7B --adapter checkpoint-1/finetune_weights.bin --lora-alpha 256
  # the base alone (e.g. to train fresh adapters from it)
  python -m tools.convert_weights --family crab_plus to-jax --out ckpt/omni --hf Qwen2.5-Omni-7B --dtype bf16
  # an adapter alone (its model config: the config.json next to it, or --config)
  python -m tools.convert_weights --family crab_plus to-jax --out ckpt/adapter \\
      --adapter checkpoint-1/finetune_weights.bin --lora-alpha 256
""",
    to_torch_description="Export a crab_jax Crab+ checkpoint to the files the original Crab+ code reads.",
    to_torch_epilog="""examples:
  python -m tools.convert_weights --family crab_plus to-torch ckpt/crab_plus --format hf --out Qwen2.5-Omni-7B-out/
  python -m tools.convert_weights --family crab_plus to-torch ckpt/crab_plus --format adapter \\
      --out checkpoint-out/finetune_weights.bin
""",
    from_run_epilog="""examples:
  # I-LoRA trained in JAX, back to the original's finetune_weights.bin
  python -m tools.convert_weights --family crab_plus from-run runs/ft --base ckpt/crab_plus --out ckpt/crab_plus_ft
  python -m tools.convert_weights --family crab_plus to-torch ckpt/crab_plus_ft --format adapter \\
      --out finetune_weights.bin

A run saves only its trainable weights, in its own layout (scanned layers, padded vocabulary,
fp32); they are put back into the converter's layout over --base (the converted checkpoint the
run started from: model.init_checkpoint). A base converted from --hf alone gets the run's
adapters if its config has the run's I-LoRA (to-jax --lora-r/--lora-heads/--lora-alpha).
""",
)


def add_to_jax_arguments(j: argparse.ArgumentParser) -> None:
    """``to-jax``: the sources and what no weight file says (read by :func:`.to_jax.to_jax`)."""
    src = j.add_argument_group("sources (at least one)")
    src.add_argument("--hf", metavar="DIR", help="HF Qwen2.5-Omni directory: config.json + model.safetensors, or "
                     "shards + model.safetensors.index.json (the thinker's base weights)")
    src.add_argument("--adapter", metavar="FILE", help="Crab+ finetune_weights.bin (the I-LoRA weights)")
    cfg = j.add_argument_group("model config (what no weight file says)")
    cfg.add_argument("--config", metavar="JSON|DIR", help="model config instead of the HF directory's config.json "
                     "(or the config.json next to --adapter): an HF config.json / directory / inline JSON, or a "
                     "crab_plus_config.json / converted checkpoint (whose I-LoRA the adapter must then fit)")
    cfg.add_argument("--lora-r", type=int, default=None, help="I-LoRA rank (default: the adapter's shapes); an "
                     "adapter of another rank fails saying so")
    cfg.add_argument("--lora-heads", type=int, default=None, help="I-LoRA B heads (default: the adapter's "
                     "lora_B{h} keys); an adapter with another head count fails saying so")
    cfg.add_argument("--lora-alpha", type=float, default=None, help="I-LoRA alpha, needed with --adapter (no shape "
                     "holds it; the Crab+ release: 256)")
    cfg.add_argument("--lora-dropout", type=float, default=None,
                     help=f"I-LoRA dropout (training only; default {DEFAULT_LORA_DROPOUT}, Crab+'s)")


def add_to_torch_arguments(t: argparse.ArgumentParser) -> None:
    """``to-torch``: the output and its format (read by :func:`.to_torch.to_torch`)."""
    t.add_argument("--out", required=True, help="output: a folder (--format hf) or a .bin file (--format adapter)")
    t.add_argument("--format", required=True, choices=list(FORMATS),
                   help="hf: HF Qwen2.5-Omni directory of the base weights (the config.json it came with + "
                   "safetensors shards + index); adapter: finetune_weights.bin of the I-LoRA weights")
    t.add_argument("--max-shard-gb", type=float, default=5.0, help="hf only: safetensors shard size (GiB)")
