"""``crab_plus_config.json``: the config file next to a converted Crab+ checkpoint's ``params/``.

One JSON object::

    {"format": "crab_jax.crab_plus_config/1",
     "thinker": {"text": {...LlamaConfig...}, "vision": {...QwenVisionConfig...},
                 "audio": {...QwenAudioConfig...}, "lora": {...ILoRAConfig...} | null,
                 "tokens": {...ThinkerTokens...}, "position_id_per_seconds": 25, ...},
     "contents": ["base", "adapter"],
     "hf_config": {...the config.json the base weights came with...} | null}

``contents`` says which parts of the model's weights ``params/`` holds: ``"base"`` (every
weight of the HF checkpoint's thinker) and / or ``"adapter"`` (the I-LoRA weights of
``finetune_weights.bin``; needs ``thinker.lora``). ``hf_config`` is kept verbatim so that
``to-torch --format hf`` writes back the ``config.json`` the checkpoint came from. Dtypes are
written by name, tuples as lists; both are restored on reading, so
``config_from_json(config_to_json(cfg)) == cfg``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence


from crab_jax.config.dataclass_json import dataclass_kwargs, to_plain
from crab_jax.families.crab_plus.model import CrabPlusConfig, ThinkerTokens
from crab_jax.io.paths import as_path
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.llama import LlamaConfig
from crab_jax.models.qwen_audio import QwenAudioConfig
from crab_jax.models.qwen_vision import QwenVisionConfig

FORMAT = "crab_jax.crab_plus_config/1"
CONFIG_FILE = "crab_plus_config.json"
PARTS = ("base", "adapter")  # what ``contents`` may list, in this order
# CrabPlusConfig field -> the config class of that nested section.
SECTIONS = {"text": LlamaConfig, "vision": QwenVisionConfig, "audio": QwenAudioConfig, "lora": ILoRAConfig,
            "tokens": ThinkerTokens}


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """What ``crab_plus_config.json`` says: the model, which parts ``params/`` holds, the HF config."""

    thinker: CrabPlusConfig
    contents: tuple[str, ...]
    hf_config: dict | None = None

    def __post_init__(self):
        object.__setattr__(self, "contents", check_contents(self.contents, self.thinker))


def check_contents(contents: Sequence[str], cfg: CrabPlusConfig) -> tuple[str, ...]:
    """``contents`` in :data:`PARTS` order; raises on an unknown part, none, or an adapter without I-LoRA."""
    unknown = sorted(set(contents) - set(PARTS))
    if unknown or not contents:
        raise ValueError(f"{CONFIG_FILE}: contents {list(contents)} must be a non-empty subset of {list(PARTS)}")
    if "adapter" in contents and cfg.lora is None:
        raise ValueError(f"{CONFIG_FILE}: contents lists 'adapter' but the thinker config has no lora section")
    return tuple(p for p in PARTS if p in contents)


def _fields(cls, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    return dataclass_kwargs(cls, d, f"{CONFIG_FILE}: {where}")


def thinker_to_json(cfg: CrabPlusConfig) -> dict:
    return to_plain(cfg)


def thinker_from_json(d: Mapping[str, Any]) -> CrabPlusConfig:
    """The ``thinker`` object -> :class:`CrabPlusConfig` (every nested section rebuilt)."""
    fields = _fields(CrabPlusConfig, d, "thinker")
    missing = sorted(f.name for f in dataclasses.fields(CrabPlusConfig)
                     if f.name not in fields and f.default is dataclasses.MISSING)
    if missing:
        raise ValueError(f"{CONFIG_FILE}: thinker: missing field(s) {missing}")
    for name, cls in SECTIONS.items():
        if fields.get(name) is not None:
            fields[name] = cls(**_fields(cls, d[name], f"thinker.{name}"))
    return CrabPlusConfig(**fields)


def config_to_json(config: CheckpointConfig) -> dict:
    return {"format": FORMAT, "thinker": thinker_to_json(config.thinker), "contents": list(config.contents),
            "hf_config": config.hf_config}


def config_from_json(d: Mapping[str, Any], source: str = CONFIG_FILE) -> CheckpointConfig:
    if d.get("format") != FORMAT:
        raise ValueError(f"{source}: format {d.get('format')!r}, expected {FORMAT!r} (a Crab+ checkpoint's "
                         f"{CONFIG_FILE})")
    unknown = sorted(set(d) - {"format", "thinker", "contents", "hf_config"})
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}")
    return CheckpointConfig(thinker_from_json(d["thinker"]), tuple(d.get("contents") or ()), d.get("hf_config"))


def read_json(path: str | os.PathLike) -> dict:
    """``path`` (local or ``gs://``): the JSON file, or a checkpoint directory holding :data:`CONFIG_FILE`."""
    path = as_path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (write one with: python -m tools.convert_weights "
                                "--family crab_plus to-jax ...)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_config(path: str | os.PathLike) -> CheckpointConfig:
    """A converted checkpoint's directory (or its :data:`CONFIG_FILE`) -> :class:`CheckpointConfig`."""
    return config_from_json(read_json(path), source=str(path))


def load_thinker_config(path: str | os.PathLike) -> CrabPlusConfig:
    """The model config stored next to a converted checkpoint's params (``Family.checkpoint_config``)."""
    return load_config(path).thinker
