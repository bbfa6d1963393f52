"""Crab's part of the ``crab-convert-weights`` command line: its sources, model-config
options, export formats and the words of its ``--help`` (the CLI adds the generic rest)."""

from __future__ import annotations

import argparse
import re

from crab_jax.checkpoints.convert.family_converter import ConverterTexts
from crab_jax.families.crab.convert.crab_table import COMPONENTS
from crab_jax.families.crab.convert.to_torch import FORMATS, SUBSETS

TEXTS = ConverterTexts(
    description="""Convert Crab weights between PyTorch / Hugging Face files and crab_jax checkpoints.

A crab_jax checkpoint is a directory: <out>/params (Orbax PyTree of the parameters, keyed by
crab_jax paths) and <out>/crab_config.json (the matching model config).

subcommands:
  to-jax    torch / HF files -> a crab_jax checkpoint (combine several into one model)
  to-torch  a crab_jax checkpoint -> Crab .bin, HF LLaMA / CLIP folder, BEATs .pt, component file
  from-run  a crab_jax training run's weights over a converted base -> a crab_jax checkpoint
  inspect   list a checkpoint's tensors and how they match the mapping tables
""",
    to_jax_epilog="""examples:
  # the whole Crab from the files users have (sizes are read from the tensors)
  python -m tools.convert_weights to-jax --out ckpt/crab \\
      --llama Llama-2-7b-chat-hf --clip clip-vit-large-patch14 --beats BEATs_iter3_plus_AS2M.pt \\
      --crab finetune_weights.bin --crab avs_finetune_weights.bin --bert-config bert-base-uncased
  # one component on its own
  python -m tools.convert_weights to-jax --out ckpt/beats --beats BEATs_iter3_plus_AS2M.pt

Later sources override earlier ones key by key (order: --llama, --clip, --beats, --component,
then --crab files in the order given), so the avs file's resized embed_tokens / lm_head rows
replace the LLaMA folder's. Keys in no file are generated and reported: the seg module's two
random Fourier matrices (drawn from --seed) and the Q-Formers' position_ids (arange).
""",
    to_torch_description="Export a crab_jax checkpoint to the files the PyTorch Crab code or HF loads.",
    to_torch_epilog="""examples:
  python -m tools.convert_weights to-torch ckpt/crab --format crab-bin --subset finetune --out finetune_weights.bin
  python -m tools.convert_weights to-torch ckpt/crab --format crab-bin --subset all --out crab_full.bin
  python -m tools.convert_weights to-torch ckpt/crab --format hf-llama --without-lora --out llama_hf/
""",
    from_run_epilog="""examples:
  # fine-tuned in JAX, back to the original PyTorch Crab's finetune_weights.bin
  python -m tools.convert_weights from-run runs/ft --base ckpt/crab --out ckpt/crab_ft
  python -m tools.convert_weights to-torch ckpt/crab_ft --format crab-bin --subset finetune --out finetune_weights.bin

A run saves only its trainable weights, in its own layout (scanned layers, padded vocabulary,
fp32); they are put back into the converter's layout over --base (the converted checkpoint the
run started from: model.init_checkpoint), and stored in --base's dtypes unless --dtype is given.
""",
)


# What argparse takes for a value, not an option, when it starts with '-': a digit or '.'
# after the dash (Python 3.13's rule). 3.11's matches only one number, so the negative taps
# of LLaVA-style configs, ``--select-layers -4,-2,-1``, were read as an unknown flag.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 14,22,23 or -4,-2,-1; "
                                         f"got {text!r}") from None


def accept_negative_values(parser: argparse.ArgumentParser) -> None:
    """Lets ``parser`` read ``-4,-2,-1`` (any word starting with a dash and a digit) as a value.
    Safe while none of its options is spelled like a negative number (none is)."""
    parser._negative_number_matcher = _NEGATIVE_VALUE


def add_to_jax_arguments(j: argparse.ArgumentParser) -> None:
    """``to-jax``: the sources and what no weight file says (read by :mod:`.to_jax`)."""
    accept_negative_values(j)
    src = j.add_argument_group("sources (at least one)")
    src.add_argument("--llama", metavar="DIR", help="HF LLaMA folder: config.json + safetensors or "
                     "pytorch_model*.bin (sharded with an index, or single)")
    src.add_argument("--clip", metavar="DIR", help="HF CLIP folder (CLIPVisionModel, or a full CLIPModel: "
                     "the text tower is set aside and reported)")
    src.add_argument("--beats", metavar="FILE", help="BEATs checkpoint .pt ({'cfg': ..., 'model': ...})")
    src.add_argument("--crab", metavar="FILE", action="append", default=[],
                     help="Crab file with Crab's names, full (base_model.model.…: finetune_weights.bin, "
                     "avs_finetune_weights.bin, a full state dict, .bin or .safetensors) or bare (model.… / "
                     "lm_head.…: audio/visual/segmentation_pretrain.bin); repeatable, later files win")
    src.add_argument("--component", metavar="NAME=FILE", action="append", default=[],
                     help="a state dict whose keys are relative to one Crab component (NAME one of "
                     f"{', '.join(COMPONENTS)}); repeatable")
    cfg = j.add_argument_group("model config (what no weight file says)")
    cfg.add_argument("--config", metavar="JSON", help="a crab_config.json (or checkpoint dir) to use as is, "
                     "instead of sizing the model from the tensors")
    cfg.add_argument("--bert-config", metavar="JSON|DIR", help="BERT config.json of the Q-Formers "
                     "(needed for vl_projector / al_projector)")
    cfg.add_argument("--llama-config", metavar="JSON|DIR", help="LLaMA config.json when no --llama folder is given")
    cfg.add_argument("--clip-config", metavar="JSON|DIR", help="CLIP config.json when no --clip folder is given")
    cfg.add_argument("--beats-cfg", metavar="JSON|FILE.pt", help="BEATs cfg when no --beats file is given")
    cfg.add_argument("--select-layers", type=_int_list, default=(14, 22, 23),
                     help="CLIP hidden states Crab taps, 0 = embeddings, negatives count from the last "
                     "(HF hidden_states indexing: -1 = last layer); default: 14,22,23")
    cfg.add_argument("--select-feature", default="patch", help="'patch' (drop the class token, Crab) or 'cls_patch'")
    cfg.add_argument("--pad-token-id", type=int, default=2, help="pad id (Crab: 2, '</s>')")
    cfg.add_argument("--lora-alpha", type=float, default=16.0, help="I-LoRA alpha (Crab: 16); r and heads come from shapes")
    cfg.add_argument("--lora-dropout", type=float, default=0.05, help="I-LoRA dropout (Crab: 0.05)")
    cfg.add_argument("--special-tokens", metavar="JSON", help="token -> id of the added tokens (default: Crab's "
                     "17 tokens after the base vocabulary)")
    cfg.add_argument("--seg-config", metavar="JSON", help="SegConfig fields overriding those read from shapes "
                     "(e.g. '{\"low_res_mask_size\": 112}')")
    j.add_argument("--seed", type=int, default=0, help="seed of the seg module's random Fourier matrices "
                   "when no source has them (default 0)")


def add_to_torch_arguments(t: argparse.ArgumentParser) -> None:
    """``to-torch``: the output and its format (read by :func:`.to_torch.to_torch`)."""
    t.add_argument("--out", required=True, help="output file (.bin / .pt / .safetensors) or folder (hf-*)")
    t.add_argument("--format", required=True, choices=list(FORMATS),
                   help="crab-bin: Crab .bin with full names; hf-llama / hf-clip: HF folders; beats-pt: "
                   "{'cfg','model'}; component: one component's state dict with its own names")
    t.add_argument("--subset", default="all", choices=list(SUBSETS),
                   help="crab-bin only. all: every name (state_dict(), loads strict=True); finetune: "
                   "vl_projector/al_projector/lora params; avs: seg_module/embed_tokens/lm_head params; "
                   "trainable: both (one name per shared tensor, as Crab saves them)")
    t.add_argument("--component", help=f"component only: {', '.join(COMPONENTS[:-1])} or {COMPONENTS[-1]}")
    t.add_argument("--without-lora", action="store_true",
                   help="hf-llama only: export the base weights of an LLM that has I-LoRA adapters")
    t.add_argument("--max-shard-gb", type=float, default=5.0, help="hf-* only: safetensors shard size (GiB)")
