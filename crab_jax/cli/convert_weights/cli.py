"""``crab-convert-weights`` / ``python -m tools.convert_weights``: PyTorch / HF <-> crab_jax.

Exit status: 0 on success, 2 when an input does not match (each offending key is named),
1 on any other error. Nothing is left half-written: outputs appear only when complete.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

DESCRIPTION = """Convert Crab weights between PyTorch / Hugging Face files and crab_jax checkpoints.

A crab_jax checkpoint is a directory: <out>/params (Orbax PyTree of the parameters, keyed by
crab_jax paths) and <out>/crab_config.json (the matching model config).

subcommands:
  to-jax    torch / HF files -> a crab_jax checkpoint (combine several into one model)
  to-torch  a crab_jax checkpoint -> Crab .bin, HF LLaMA / CLIP folder, BEATs .pt, component file
  from-run  a crab_jax training run's weights over a converted base -> a crab_jax checkpoint
  inspect   list a checkpoint's tensors and how they match the mapping tables
"""

TO_JAX_EPILOG = """examples:
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
"""

TO_TORCH_EPILOG = """examples:
  python -m tools.convert_weights to-torch ckpt/crab --format crab-bin --subset finetune --out finetune_weights.bin
  python -m tools.convert_weights to-torch ckpt/crab --format crab-bin --subset all --out crab_full.bin
  python -m tools.convert_weights to-torch ckpt/crab --format hf-llama --without-lora --out llama_hf/
"""


FROM_RUN_EPILOG = """examples:
  # fine-tuned in JAX, back to the original PyTorch Crab's finetune_weights.bin
  python -m tools.convert_weights from-run runs/ft --base ckpt/crab --out ckpt/crab_ft
  python -m tools.convert_weights to-torch ckpt/crab_ft --format crab-bin --subset finetune --out finetune_weights.bin

A run saves only its trainable weights, in its own layout (scanned layers, padded vocabulary,
fp32); they are put back into the converter's layout over --base (the converted checkpoint the
run started from: model.init_checkpoint), and stored in --base's dtypes unless --dtype is given.
"""


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(",", " ").split())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crab-convert-weights", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-jax,to-torch,from-run,inspect}")

    j = sub.add_parser("to-jax", help="torch / HF files -> crab_jax checkpoint", epilog=TO_JAX_EPILOG,
                       description="Convert torch / HF weights into a crab_jax checkpoint (params + crab_config.json).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    j.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    src = j.add_argument_group("sources (at least one)")
    src.add_argument("--llama", metavar="DIR", help="HF LLaMA folder: config.json + safetensors or "
                     "pytorch_model*.bin (sharded with an index, or single)")
    src.add_argument("--clip", metavar="DIR", help="HF CLIP folder (CLIPVisionModel, or a full CLIPModel: "
                     "the text tower is set aside and reported)")
    src.add_argument("--beats", metavar="FILE", help="BEATs checkpoint .pt ({'cfg': ..., 'model': ...})")
    src.add_argument("--crab", metavar="FILE", action="append", default=[],
                     help="Crab file with full names (base_model.model.…): finetune_weights.bin, "
                     "avs_finetune_weights.bin, audio/visual/segmentation_pretrain.bin, a full state dict "
                     "(.bin or .safetensors); repeatable, later files win")
    src.add_argument("--component", metavar="NAME=FILE", action="append", default=[],
                     help="a state dict whose keys are relative to one Crab component (NAME one of llm, "
                     "visual_encoder, audio_encoder, vl_projector, al_projector, seg_module); repeatable")
    cfg = j.add_argument_group("model config (what no weight file says)")
    cfg.add_argument("--config", metavar="JSON", help="a crab_config.json (or checkpoint dir) to use as is, "
                     "instead of sizing the model from the tensors")
    cfg.add_argument("--bert-config", metavar="JSON|DIR", help="BERT config.json of the Q-Formers "
                     "(needed for vl_projector / al_projector)")
    cfg.add_argument("--llama-config", metavar="JSON|DIR", help="LLaMA config.json when no --llama folder is given")
    cfg.add_argument("--clip-config", metavar="JSON|DIR", help="CLIP config.json when no --clip folder is given")
    cfg.add_argument("--beats-cfg", metavar="JSON|FILE.pt", help="BEATs cfg when no --beats file is given")
    cfg.add_argument("--select-layers", type=_int_list, default=(14, 22, 23),
                     help="CLIP hidden states Crab taps (default: 14,22,23)")
    cfg.add_argument("--select-feature", default="patch", help="'patch' (drop the class token, Crab) or 'cls_patch'")
    cfg.add_argument("--pad-token-id", type=int, default=2, help="pad id (Crab: 2, '</s>')")
    cfg.add_argument("--lora-alpha", type=float, default=16.0, help="I-LoRA alpha (Crab: 16); r and heads come from shapes")
    cfg.add_argument("--lora-dropout", type=float, default=0.05, help="I-LoRA dropout (Crab: 0.05)")
    cfg.add_argument("--special-tokens", metavar="JSON", help="token -> id of the added tokens (default: Crab's "
                     "17 tokens after the base vocabulary)")
    cfg.add_argument("--seg-config", metavar="JSON", help="SegConfig fields overriding those read from shapes "
                     "(e.g. '{\"low_res_mask_size\": 112}')")
    j.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                   help="output dtype of floating tensors (default: keep the source dtype)")
    j.add_argument("--seed", type=int, default=0, help="seed of the seg module's random Fourier matrices "
                   "when no source has them (default 0)")
    j.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    t = sub.add_parser("to-torch", help="crab_jax checkpoint -> torch / HF files", epilog=TO_TORCH_EPILOG,
                       description="Export a crab_jax checkpoint to the files the PyTorch Crab code or HF loads.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("checkpoint", help="crab_jax checkpoint directory (params/ + crab_config.json)")
    t.add_argument("--out", required=True, help="output file (.bin / .pt / .safetensors) or folder (hf-*)")
    t.add_argument("--format", required=True, choices=["crab-bin", "hf-llama", "hf-clip", "beats-pt", "component"],
                   help="crab-bin: Crab .bin with full names; hf-llama / hf-clip: HF folders; beats-pt: "
                   "{'cfg','model'}; component: one component's state dict with its own names")
    t.add_argument("--subset", default="all", choices=["all", "finetune", "avs", "trainable"],
                   help="crab-bin only. all: every name (state_dict(), loads strict=True); finetune: "
                   "vl_projector/al_projector/lora params; avs: seg_module/embed_tokens/lm_head params; "
                   "trainable: both (one name per shared tensor, as Crab saves them)")
    t.add_argument("--component", help="component only: llm, visual_encoder, audio_encoder, vl_projector, "
                   "al_projector or seg_module")
    t.add_argument("--without-lora", action="store_true",
                   help="hf-llama only: export the base weights of an LLM that has I-LoRA adapters")
    t.add_argument("--max-shard-gb", type=float, default=5.0, help="hf-* only: safetensors shard size (GiB)")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    r = sub.add_parser("from-run", help="a crab_jax training run's weights -> crab_jax checkpoint",
                       epilog=FROM_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("workdir", help="the training run's --workdir (its latest committed checkpoint is used)")
    r.add_argument("--base", required=True, help="converted checkpoint holding every other weight "
                                                 "(the run's model.init_checkpoint)")
    r.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    r.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                   help="output dtype of every float array (default: each array keeps the base's dtype)")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    i = sub.add_parser("inspect", help="list tensors, shapes, dtypes, parameter count, mapping matches",
                       description="Describe any supported checkpoint: torch .bin/.pt, .safetensors, an HF "
                       "folder, or a crab_jax checkpoint.")
    i.add_argument("path", help="file or directory")
    i.add_argument("--summary", action="store_true", help="counts and mapping matches only, no tensor list")
    return p


def run_to_jax(args) -> None:
    from crab_jax.families.crab.convert.assemble import ConfigOptions
    from crab_jax.cli.convert_weights.to_jax import (
        convert, gather_sources, output_dtype, read_json_arg, summary, write_checkpoint)

    beats_cfg = None
    if args.beats_cfg and args.beats_cfg.endswith((".pt", ".bin")):
        from crab_jax.checkpoints.convert.tensor_files import open_tensors

        beats_cfg = dict(open_tensors(args.beats_cfg).extra.get("cfg") or {}) or None
    elif args.beats_cfg:
        beats_cfg = read_json_arg(args.beats_cfg)
    opts = ConfigOptions(
        bert_config=read_json_arg(args.bert_config), select_layer_list=tuple(args.select_layers),
        select_feature=args.select_feature, pad_token_id=args.pad_token_id, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, special_token_ids=read_json_arg(args.special_tokens),
        seg=read_json_arg(args.seg_config), llama_config=read_json_arg(args.llama_config),
        clip_config=read_json_arg(args.clip_config), beats_cfg=beats_cfg)
    config_json = None
    if args.config:
        from crab_jax.families.crab import config_io

        config_json = config_io.read_json(args.config)
    sources = gather_sources(llama=args.llama, clip=args.clip, beats=args.beats, crab=args.crab,
                             component=args.component)
    converted = convert(sources, opts, config_json=config_json, dtype=output_dtype(args.dtype), seed=args.seed)
    print(summary(converted))
    write_checkpoint(args.out, converted, overwrite=args.overwrite)
    print(f"wrote {args.out} (params/ + crab_config.json)")


def run_to_torch(args) -> None:
    from crab_jax.cli.convert_weights.to_torch import export

    print(export(args.checkpoint, args.out, args.format, subset=args.subset, component=args.component,
                 without_lora=args.without_lora, max_shard_gb=args.max_shard_gb, overwrite=args.overwrite))


def run_from_run(args) -> None:
    from crab_jax.cli.convert_weights.from_run import merge_run
    from crab_jax.cli.convert_weights.to_jax import output_dtype, summary, write_checkpoint

    converted, step = merge_run(args.workdir, args.base, dtype=output_dtype(args.dtype))
    print(summary(converted))
    write_checkpoint(args.out, converted, overwrite=args.overwrite)
    print(f"wrote {args.out} (params/ + crab_config.json): {args.base} with step {step} of {args.workdir}")


def run_inspect(args) -> None:
    from crab_jax.cli.convert_weights.inspect_cmd import inspect_path

    print(inspect_path(args.path, show_tensors=not args.summary))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crab_jax.checkpoints.convert.mapping import MappingError

    run = {"to-jax": run_to_jax, "to-torch": run_to_torch, "from-run": run_from_run,
           "inspect": run_inspect}[args.command]
    try:
        run(args)
    except MappingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
