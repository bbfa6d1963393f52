"""Benchmark: the Qwen2.5-Omni thinker (HF safetensors) + a Crab+ ``finetune_weights.bin`` ->
crab_jax Orbax -> both back, peak memory of each converter step.

Writes a synthetic checkpoint at the REAL widths of Qwen2.5-Omni-7B's thinker (the fixture
manifest's ``state_dict_names`` config: text hidden 3584, MLP 18944, vocabulary 152064, vision
1280 / 3420, audio 1280 / 5120) with ``--llm-layers`` / ``--vision-layers`` / ``--audio-layers``
layers (28 / 32 / 32 for the real size), whose key list is exactly the converter table's torch
layout of that config, as bf16 safetensors shards (random values, like the release's dtype), and
a synthetic ``finetune_weights.bin`` of the manifest's real I-LoRA (r 128, 3 heads, bf16).
Then, each in a fresh process (:mod:`benchmarks.rss`):

1. ``to-jax --hf <src> --adapter <bin> --dtype bf16`` (-> Orbax, base + adapter),
2. ``to-torch <ckpt> --format hf`` (-> safetensors shards + config.json),
3. ``to-torch <ckpt> --format adapter`` (-> finetune_weights.bin),

reporting wall time and peak RSS (``VmHWM``) as a ratio to the size, in the output dtype, of
what the step converts (base + adapter; base; adapter), with and without the import-only
baseline. The written files' key lists are checked against the source's. ``--adapter-only``
writes and converts the adapter alone (steps 1 without --hf, and 3), e.g. at the real size.

    python -m benchmarks.convert_thinker --llm-layers 4 --vision-layers 4 --audio-layers 4 --workdir /tmp/cb_thinker
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time

import ml_dtypes
import numpy as np

from benchmarks.rss import baseline, measure, rss_table
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.checkpoints.convert.writers import save_torch_bin, write_hf_shards
from crab_jax.families.crab_plus.convert.thinker_table import thinker_table, torch_layout
from crab_jax.families.crab_plus.convert.variables import expected_variables
from crab_jax.families.crab_plus.hf_config import thinker_config_from_hf
from crab_jax.models.ilora import ILoRAConfig

BF16 = np.dtype(ml_dtypes.bfloat16)
DEFAULT_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared",
                                "fixtures", "crab_plus", "manifest.json")


def real_configs(manifest_path: str, llm: int, vision: int, audio: int) -> tuple[dict, dict]:
    """``(HF Qwen2.5-Omni config.json dict, I-LoRA section)``: the manifest's real thinker config
    with the three layer counts replaced (vision full-attention blocks kept where they exist)."""
    with open(manifest_path) as f:
        section = json.load(f)["fixtures"]["state_dict_names"]["config"]
    thinker = copy.deepcopy(section["real_thinker_config_full"])
    thinker["text_config"]["num_hidden_layers"] = llm
    v = thinker["vision_config"]
    v["depth"] = vision
    v["fullatt_block_indexes"] = [i for i in v["fullatt_block_indexes"] if i < vision] or [vision - 1]
    thinker["audio_config"]["encoder_layers"] = thinker["audio_config"]["num_hidden_layers"] = audio
    config = {"architectures": ["Qwen2_5OmniModel"], "model_type": "qwen2_5_omni", "enable_audio_output": False,
              "torch_dtype": "bfloat16", "thinker_config": thinker}
    return config, section["real_lora"]


def torch_shapes(config: dict, lora: dict) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{'base': torch key -> shape, 'adapter': ...}``: the converter table's torch layout of the
    config's model (the released files' key lists at these layer counts)."""
    cfg = thinker_config_from_hf(config, lora=ILoRAConfig(r=lora["r"], alpha=lora["lora_alpha"],
                                                          num_heads=lora["lora_nums"], dropout=lora["lora_dropout"]))
    table = thinker_table(cfg)
    out = {}
    for part in ("base", "adapter"):
        jax_shapes = {k: s for k, (s, _) in expected_variables(cfg, [part]).items()}
        out[part] = {k: shape for k, (_, shape) in torch_layout(table, jax_shapes).items()}
    return out


def _random(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape, np.float32) * 0.02).astype(BF16)


def write_sources(src: str | None, adapter: str, config: dict, shapes: dict) -> None:
    """The HF directory (bf16 shards of 2 GiB, one tensor drawn at a time; none if ``src`` is
    None: then the config.json goes next to the adapter, as the training saves it) and the adapter."""
    os.makedirs(os.path.dirname(adapter))
    config_dir = os.path.dirname(adapter)
    if src is not None:
        os.makedirs(src)
        specs = [(k, s, BF16, (lambda s=s, i=i: _random(s, i))) for i, (k, s) in enumerate(shapes["base"].items())]
        write_hf_shards(src, specs, max_shard_bytes=2 * 2**30)
        config_dir = src
    with open(os.path.join(config_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    state = {k: _random(s, 10**6 + i) for i, (k, s) in enumerate(shapes["adapter"].items())}
    save_torch_bin(adapter, state)


def _nbytes(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for s in shapes.values()) * BF16.itemsize


def check_written(path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """The written file's key list and shapes are the source's (headers only)."""
    tensors = open_tensors(path)
    got = {k: tuple(tensors.shape(k)) for k in tensors}
    if got != shapes:
        raise RuntimeError(f"{path}: {len(got)} tensors differ from the source's {len(shapes)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm-layers", type=int, default=4, help="text decoder layers (28 = Qwen2.5-Omni-7B)")
    p.add_argument("--vision-layers", type=int, default=4, help="vision blocks (32 = the release)")
    p.add_argument("--audio-layers", type=int, default=4, help="audio encoder layers (32 = the release)")
    p.add_argument("--manifest", default=os.environ.get("CRAB_PLUS_FIXTURES") and os.path.join(
        os.environ["CRAB_PLUS_FIXTURES"], "manifest.json") or DEFAULT_MANIFEST,
        help="the Crab+ fixture manifest (its state_dict_names config holds the real widths)")
    p.add_argument("--workdir", default="/tmp/crab_convert_thinker_bench", help="scratch folder (deleted first)")
    p.add_argument("--adapter-only", action="store_true", help="no base weights: to-jax --adapter alone and "
                   "to-torch --format adapter (the real-size adapter, 1.7 GiB, fits where the base does not)")
    p.add_argument("--keep", action="store_true", help="keep the workdir's files (sources, checkpoint, exports)")
    args = p.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    src, adapter, ckpt, hf_back, adapter_back = (os.path.join(args.workdir, n) for n in (
        "Qwen2.5-Omni", "checkpoint/finetune_weights.bin", "crab_ckpt", "hf_back", "finetune_back.bin"))
    config, lora = real_configs(args.manifest, args.llm_layers, args.vision_layers, args.audio_layers)
    shapes = torch_shapes(config, lora)
    t = time.time()
    write_sources(None if args.adapter_only else src, adapter, config, shapes)
    base_bytes, adapter_bytes = _nbytes(shapes["base"]), _nbytes(shapes["adapter"])
    print(f"wrote synthetic sources: {args.llm_layers} / {args.vision_layers} / {args.audio_layers} layers; base "
          f"{'(not written) ' * args.adapter_only}{len(shapes['base'])} tensors, {base_bytes / 2 / 1e9:.2f} B params; "
          f"adapter (r {lora['r']}, "
          f"{lora['lora_nums']} heads) {len(shapes['adapter'])} tensors, {adapter_bytes / 2 / 1e9:.3f} B params; "
          f"bf16, in {time.time() - t:.0f} s")
    family = ["--family", "crab_plus"]
    base = baseline(family)
    to_jax = [*family, "to-jax", "--adapter", adapter, "--lora-alpha", lora["lora_alpha"], "--dtype", "bf16",
              "--out", ckpt]
    if args.adapter_only:
        rows = [("to-jax --adapter (bf16 -> Orbax bf16)", adapter_bytes, measure(to_jax))]
    else:
        rows = [("to-jax --hf --adapter (bf16 -> Orbax bf16)", base_bytes + adapter_bytes,
                 measure([*to_jax, "--hf", src])),
                ("to-torch --format hf", base_bytes,
                 measure([*family, "to-torch", ckpt, "--format", "hf", "--out", hf_back]))]
        check_written(hf_back, shapes["base"])
    rows.append(("to-torch --format adapter", adapter_bytes,
                 measure([*family, "to-torch", ckpt, "--format", "adapter", "--out", adapter_back])))
    check_written(adapter_back, shapes["adapter"])
    print(f"import-only baseline RSS {base / 2**30:.2f} GiB; model = what the step converts, in bf16")
    print("\n".join(rss_table(rows, base)))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
