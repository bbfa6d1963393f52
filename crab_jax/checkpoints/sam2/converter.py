"""SAM 2.1 (a shared model, no family) in ``crab-convert-weights``: ``--family sam2`` selects this
:class:`~crab_jax.checkpoints.convert.family_converter.FamilyConverter`.

to-jax: ``--sam2 sam2.1_hiera_large.pt`` (+ ``--config`` for other sizes than Hiera-L) or an
HF ``Sam2Model`` folder -> ``<out>/params`` + ``<out>/sam2_config.json``; to-torch:
``--format pt`` (the original's names) or ``--format hf``. SAM2 is never trained here, so
``from-run`` says so.
"""

from __future__ import annotations

import argparse
import re
from typing import Mapping, Sequence

import numpy as np

from crab_jax.checkpoints.convert.family_converter import CheckpointCheck, ConverterTexts, FamilyConverter
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.output import Converted
from crab_jax.checkpoints.convert.readers import read_json_arg
from crab_jax.checkpoints.convert.tables.sam2 import original_to_hf, sam2_table
from crab_jax.checkpoints.sam2 import export
from crab_jax.checkpoints.sam2.original_names import VIDEO_ONLY
from crab_jax.checkpoints.sam2.weights import (CONFIG_FILE, HF_VIDEO_ONLY, config_from_json, model_shapes,
                                               read_config_file, read_converted, read_sam2, strict_problems)

FORMATS = ("pt", "hf")
_POINT_EMBEDDING = re.compile(r"^(sam_prompt_encoder\.point_embeddings\.)\d+\.")

TEXTS = ConverterTexts(
    description="""Convert SAM 2.1 image-predictor weights (the second stage of Crab+) between the original's
checkpoint, an HF Sam2Model folder and a crab_jax folder.

A crab_jax SAM2 folder: <out>/params (Orbax, keyed by HF Sam2Model names) and <out>/sam2_config.json
(the sizes as HF Sam2Config fields, and the HF config.json the weights came with). The original's
sam2.1_hiera_large.pt ({"model": state dict}) holds no sizes: it is read as Hiera-L unless --config
says otherwise. Every read is strict: a missing, extra or mis-shaped tensor fails naming the key and
both shapes; the video model's keys (memory attention / encoder, object pointers) are skipped and listed.

subcommands:
  to-jax    --sam2 FILE.pt | HF_DIR -> a crab_jax SAM2 folder
  to-torch  a crab_jax SAM2 folder -> the original's .pt (--format pt) or an HF folder (--format hf)
  inspect   list a checkpoint's tensors and how they match the SAM2 names
""",
    to_jax_epilog="""examples:
  python -m tools.convert_weights --family sam2 to-jax --sam2 checkpoints/sam2.1_hiera_large.pt --out ckpt/sam2
  python -m tools.convert_weights --family sam2 to-jax --sam2 sam2.1-hiera-large/ --out ckpt/sam2
  python -m crab_jax.segment --sam2 ckpt/sam2 ...   (or give it the .pt / HF folder directly)
""",
    to_torch_description="Export a crab_jax SAM2 folder to the original's .pt or an HF Sam2Model folder.",
    to_torch_epilog="""examples:
  python -m tools.convert_weights --family sam2 to-torch ckpt/sam2 --format pt --out sam2.1_hiera_large.pt
  python -m tools.convert_weights --family sam2 to-torch ckpt/sam2 --format hf --out sam2.1-hiera-large-hf/

--format pt writes the image predictor's tensors only (a .pt read here loses its video-model keys).
""",
    from_run_epilog="SAM2 is not trained by crab_jax: there is no run to convert.\n",
)


def add_to_jax_arguments(j: argparse.ArgumentParser) -> None:
    j.add_argument("--sam2", required=True, metavar="FILE|DIR",
                   help="the original's sam2.1_*.pt ({'model': state dict}) or an HF Sam2Model folder")
    j.add_argument("--config", metavar="JSON|DIR", default=None,
                   help="sizes of a .pt other than Hiera-L: an HF config.json / folder / inline JSON, or a "
                        f"{CONFIG_FILE}")


def to_jax(args: argparse.Namespace, dtype: np.dtype | None) -> Converted:
    data = read_json_arg(args.config)
    weights = read_sam2(args.sam2, None if data is None else config_from_json(data))
    return export.converted(weights, dtype)


def add_to_torch_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--out", required=True, help="output: a .pt file (--format pt) or a folder (--format hf)")
    t.add_argument("--format", required=True, choices=FORMATS,
                   help="pt: the original's {'model': state dict} under its names; hf: an HF Sam2Model folder "
                        "(config.json + model.safetensors)")
    t.add_argument("--max-shard-gb", type=float, default=5.0, help="hf only: safetensors shard size (GiB)")


def to_torch(args: argparse.Namespace) -> str:
    weights = read_converted(args.checkpoint)
    if args.format == "pt":
        n = export.write_original(args.out, weights, overwrite=args.overwrite)
    else:
        n = export.write_hf(args.out, weights, max_shard_bytes=int(args.max_shard_gb * 2**30),
                            overwrite=args.overwrite)
    return f"wrote {args.out} ({args.format}: {n} tensors)"


def from_run(workdir: str, base: str, dtype: np.dtype | None) -> tuple[Converted, int]:
    raise NotImplementedError("--family sam2: SAM2 is not trained by crab_jax, there is no run to convert")


def classify_keys(keys: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """key -> ``'hf'`` / ``'original'`` (a row matches its name) or ``'video-only'``; plus unmatched keys."""
    table = sam2_table()
    matched, unmatched = {}, []
    for key in keys:
        if VIDEO_ONLY.search(key) or HF_VIDEO_ONLY.search(key):
            matched[key] = "video-only (skipped)"
        elif table.torch_key_to_jax(key) is not None:
            matched[key] = "hf"
        elif _renamed_by_original(key):
            matched[key] = "original"
        else:
            unmatched.append(key)
    return matched, unmatched


def _renamed_by_original(key: str) -> bool:
    """``original_to_hf`` renames ``key`` to a name the HF table maps (alone: a point embedding
    is then the first of its stack)."""
    key = _POINT_EMBEDDING.sub(r"\g<1>0.", key)
    out, dropped = original_to_hf({key: np.zeros((1, 1), np.float32)})
    return not dropped and all(sam2_table().torch_key_to_jax(k) is not None for k in out)


def check_checkpoint(folder: str, arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> CheckpointCheck:
    cfg, hf_config = read_config_file(folder)
    want = {k: s for k, (s, _) in model_shapes(cfg).items()}
    problems = strict_problems({k: s for k, (s, _) in arrays.items()}, want)
    bb = cfg.vision.backbone
    about = (f"SAM 2.1 image predictor: Hiera {list(bb.blocks_per_stage)} x {list(bb.embed_dim_per_stage)}, "
             f"image {cfg.image_size}; HF config.json: {'kept' if hf_config is not None else 'none'}")
    message = None
    if problems:
        message = str(MappingError(f"{folder}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)))
    return CheckpointCheck(about=about, problems=message, unmatched=sam2_table(cfg).unmatched_jax(arrays))


CONVERTER = FamilyConverter(
    config_file=CONFIG_FILE,
    texts=TEXTS,
    add_to_jax_arguments=add_to_jax_arguments,
    to_jax=to_jax,
    add_to_torch_arguments=add_to_torch_arguments,
    to_torch=to_torch,
    from_run=from_run,
    classify_keys=classify_keys,
    check_checkpoint=check_checkpoint,
)
