"""``to-torch`` for Crab: a converted checkpoint -> the files the PyTorch world loads.

Formats (``--format``):

* ``crab-bin``: Crab's ``.bin`` (``torch.save`` of a dict), full names
  (``base_model.model.…``). ``--subset all`` is the whole ``state_dict()`` (every name of a
  tied tensor, buffers included: loads with ``strict=True``); ``finetune`` / ``avs`` /
  ``trainable`` are what Crab's training saves (parameters only, one name per shared tensor):
  names containing ``vl_projector``/``al_projector``/``lora`` / ``seg_module``/
  ``embed_tokens``/``lm_head`` / both;
* ``hf-llama``: an HF LLaMA folder (config.json + safetensors, sharded above
  ``--max-shard-gb``) of the LLM's base weights;
* ``hf-clip``: an HF ``CLIPVisionModel`` folder of the visual tower;
* ``beats-pt``: a BEATs checkpoint ``{'cfg', 'model'}``;
* ``component``: one component's state dict with its own (un-prefixed) names, as
  ``.safetensors`` or torch ``.bin`` by the output's extension.

Memory: the checkpoint is restored once; leaves are converted one at a time and dropped,
so the process holds about one copy of the model.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.writers import save_safetensors, save_torch_bin, write_hf_dir
from crab_jax.families.crab import config_io
from crab_jax.families.crab.convert.crab_table import COMPONENT_PREFIXES, COMPONENTS, tables_for
from crab_jax.families.crab.convert.variables import components_of_sections, expected_variables

FORMATS = ("crab-bin", "hf-llama", "hf-clip", "beats-pt", "component")
SUBSETS = {  # --subset -> words of the names kept (None: every name)
    "all": None,
    "finetune": ("vl_projector", "al_projector", "lora"),
    "avs": ("seg_module", "embed_tokens", "lm_head"),
    "trainable": ("vl_projector", "al_projector", "lora", "seg_module", "embed_tokens", "lm_head"),
}
FORMAT_COMPONENT = {"hf-llama": "llm", "hf-clip": "visual_encoder", "beats-pt": "audio_encoder"}


@dataclasses.dataclass
class Checkpoint:
    """A converted checkpoint in memory: its arrays and its config's sections and components."""

    flat: dict[str, np.ndarray]
    sections: dict[str, Any]
    components: list[str]


def read_sections(folder: str) -> tuple[dict, dict[str, Any], list[str]]:
    """``(config JSON, its sections, the components they size)`` of a converted checkpoint."""
    config_json = config_io.read_json(folder)
    sections = config_io.sections_from_json(config_json)
    return config_json, sections, components_of_sections(sections)


def load_checkpoint(folder: str) -> Checkpoint:
    _, sections, components = read_sections(folder)
    return Checkpoint(orbax_io.restore_flat(folder), sections, components)


def check_against_config(arrays: Mapping[str, tuple[tuple[int, ...], np.dtype]], sections: Mapping[str, Any],
                         components: Iterable[str]) -> dict[str, tuple]:
    """The arrays (name -> (shape, dtype)) must be exactly the model's variables (names, shapes);
    returns the model's ``name -> (shape, dtype, is_buffer)``."""
    expected = expected_variables(sections, list(components))
    problems = [f"missing {k!r}: expected shape {s} {d}" for k, (s, d, _) in expected.items() if k not in arrays]
    problems += [f"unexpected {k!r} {tuple(s)} {d}: the config's model has no such parameter"
                 for k, (s, d) in arrays.items() if k not in expected]
    problems += [f"{k!r}: expected shape {expected[k][0]}, found {tuple(s)}"
                 for k, (s, _) in arrays.items() if k in expected and tuple(s) != expected[k][0]]
    if problems:
        raise MappingError(f"checkpoint does not match its {config_io.CONFIG_FILE}: {len(problems)} problem(s):\n  "
                           + "\n  ".join(problems))
    return expected


def torch_state(ckpt: Checkpoint, components: Iterable[str], *, prefixed: bool, subset: str | None = None,
                tied_names: str = "all", drop_lora: bool = False) -> dict[str, np.ndarray]:
    """Converts (and removes from ``ckpt.flat``) the leaves of ``components`` to torch names/layouts.

    ``prefixed``: full Crab names; otherwise names relative to the single component.
    ``subset``: a key of :data:`SUBSETS` (parameters only, never buffers).
    """
    expected = check_against_config({k: (v.shape, v.dtype) for k, v in ckpt.flat.items()}, ckpt.sections,
                                    ckpt.components)
    components = list(components)
    missing = [c for c in components if c not in ckpt.components]
    if missing:
        raise ValueError(f"the checkpoint has no {missing} (it has {ckpt.components})")
    words = SUBSETS[subset] if subset is not None else None
    out: dict[str, np.ndarray] = {}
    for comp in components:
        table = tables_for(ckpt.sections, [comp])
        jax_prefix = comp + "."
        torch_prefix = COMPONENT_PREFIXES[comp][0]
        for key in [k for k in ckpt.flat if k.startswith(jax_prefix)]:
            if words is not None and expected[key][2]:
                continue  # buffers: Crab's save functions collect parameters only
            if drop_lora and (key.endswith(".lora_A") or key.endswith(".lora_B") or key.endswith(".lora_route")):
                continue
            value = ckpt.flat[key]
            for tkey, tval in table.to_torch({key: value}, tied_names=tied_names).items():
                if words is not None and not any(w in tkey for w in words):
                    continue
                out[tkey if prefixed else tkey[len(torch_prefix):]] = tval
            del ckpt.flat[key], value  # keep about one copy of the model in memory
    return out


def hf_llama_config(llama, vocab: int, dtype: np.dtype) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": vocab, "hidden_size": llama.hidden_size, "intermediate_size": llama.intermediate_size,
        "num_hidden_layers": llama.num_hidden_layers, "num_attention_heads": llama.num_attention_heads,
        "num_key_value_heads": llama.num_key_value_heads, "head_dim": llama.head_dim,
        "rms_norm_eps": llama.rms_norm_eps, "rope_theta": llama.rope_theta, "rope_scaling": None,
        "max_position_embeddings": llama.max_position_embeddings,
        "tie_word_embeddings": llama.tie_word_embeddings, "attention_bias": llama.attention_bias,
        "mlp_bias": llama.mlp_bias, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": _torch_dtype_name(dtype),
    }


def hf_clip_config(clip) -> dict:
    v = clip.vision
    return {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
            "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
            "patch_size": v.patch_size, "image_size": v.image_size, "num_channels": v.num_channels,
            "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act}


def _torch_dtype_name(dtype) -> str:
    return {"bfloat16": "bfloat16", "float16": "float16"}.get(np.dtype(dtype).name, "float32")


def export(folder: str, out: str, fmt: str, *, subset: str = "all", component: str | None = None,
           without_lora: bool = False, max_shard_gb: float = 5.0, overwrite: bool = False) -> str:
    """Writes ``out`` in ``fmt`` (see the module docstring); returns a one-line summary."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {FORMATS}")
    ckpt = load_checkpoint(folder)
    if fmt == "crab-bin":
        if subset not in SUBSETS:
            raise ValueError(f"--subset {subset!r}: expected one of {sorted(SUBSETS)}")
        state = torch_state(ckpt, ckpt.components, prefixed=True, subset=None if subset == "all" else subset,
                            tied_names="all" if subset == "all" else "first")
        save_torch_bin(out, state, overwrite=overwrite)
    elif fmt == "component":
        if component not in COMPONENTS:
            raise ValueError(f"--component {component!r}: expected one of {list(COMPONENTS)}")
        state = torch_state(ckpt, [component], prefixed=False)
        if out.endswith(".safetensors"):
            save_safetensors(out, state, overwrite=overwrite)
        else:
            save_torch_bin(out, state, overwrite=overwrite)
    else:
        comp = FORMAT_COMPONENT[fmt]
        if fmt == "hf-llama" and ckpt.sections.get("lora") is not None and not without_lora:
            raise ValueError("the LLM has I-LoRA adapters (router-mixed heads), which an HF LLaMA cannot hold: "
                             "pass --without-lora to export the base weights only, or use --format crab-bin")
        state = torch_state(ckpt, [comp], prefixed=False, drop_lora=without_lora)
        if fmt == "hf-llama":
            embed = state["model.embed_tokens.weight"]
            write_hf_dir(out, hf_llama_config(ckpt.sections["llama"], embed.shape[0], embed.dtype), state,
                         max_shard_bytes=int(max_shard_gb * 2**30), overwrite=overwrite)
        elif fmt == "hf-clip":
            write_hf_dir(out, hf_clip_config(ckpt.sections["clip"]), state,
                         max_shard_bytes=int(max_shard_gb * 2**30), overwrite=overwrite)
        else:
            cfg = {k: v for k, v in config_io.to_plain(ckpt.sections["beats"]).items() if k != "layer_norm_eps"}
            save_torch_bin(out, state, {"cfg": cfg}, overwrite=overwrite)
    n = sum(int(np.prod(v.shape)) for v in state.values())
    return f"wrote {out}: {len(state)} tensors, {n:,} values ({fmt}{', ' + subset if fmt == 'crab-bin' else ''})"


def to_torch(args: argparse.Namespace) -> str:
    """The parsed ``to-torch`` options (:func:`crab_jax.families.crab.convert.arguments.add_to_torch_arguments`)."""
    return export(args.checkpoint, args.out, args.format, subset=args.subset, component=args.component,
                  without_lora=args.without_lora, max_shard_gb=args.max_shard_gb, overwrite=args.overwrite)
