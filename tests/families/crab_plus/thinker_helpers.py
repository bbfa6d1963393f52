"""The fixture's tiny thinker built in crab_jax with the original's weights, and fixture batches."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.checkpoints.convert.mapping import MappingTable
from crab_jax.families.crab_plus.convert.thinker_table import thinker_rules
from crab_jax.families.crab_plus.hf_config import thinker_config_from_hf
from crab_jax.families.crab_plus.layout import thinker_batch
from crab_jax.families.crab_plus.model import CrabPlusConfig, CrabPlusThinker
from crab_jax.models.ilora import DEFAULT_TARGETS, ILoRAConfig
from crab_jax.models.state_dict import expected_shapes, load_flat
from tests.families.crab_plus.tiny_weights import tiny_thinker_state

MODEL_DIR = "tiny_model/Qwen2.5-Omni-tiny"


def fixture_lora(manifest: dict, fixture: str) -> ILoRAConfig:
    # Fixtures without their own entry share the tiny model (and its adapter) of state_dict_names.
    lora = manifest["fixtures"][fixture]["config"].get("lora") or \
        manifest["fixtures"]["state_dict_names"]["config"]["tiny_lora"]
    return ILoRAConfig(r=lora["r"], alpha=float(lora["lora_alpha"]), num_heads=lora["lora_nums"],
                       dropout=float(lora["lora_dropout"]), targets=tuple(lora.get("target_modules", DEFAULT_TARGETS)))


def fixture_config(fixtures_dir: pathlib.Path, manifest: dict, fixture: str, **options) -> CrabPlusConfig:
    with open(pathlib.Path(fixtures_dir) / MODEL_DIR / "config.json") as f:
        config = json.load(f)
    return thinker_config_from_hf(config, lora=fixture_lora(manifest, fixture), **options)


def fixture_thinker(fixtures_dir, manifest, fixture: str, *, dtype="float32", **options) -> CrabPlusThinker:
    """The tiny thinker with the base checkpoint + the adapter file, in eval mode."""
    cfg = fixture_config(fixtures_dir, manifest, fixture, **options)
    cfg = dataclasses.replace(cfg, dtype=dtype)
    model = CrabPlusThinker(cfg, rngs=nnx.Rngs(0))
    state = tiny_thinker_state(fixtures_dir)
    table = MappingTable("tiny_thinker", thinker_rules(cfg, cfg.lora is not None))  # thinker-relative keys
    load_flat(model, table.to_jax(state, expected_shapes(model), source="tiny thinker"))
    model.eval()
    return model


def fixture_arrays(fixtures_dir, fixture: str) -> dict[str, np.ndarray]:
    with np.load(pathlib.Path(fixtures_dir) / fixture / f"{fixture}.npz") as z:
        return dict(z)


def device_batch(arrays, cfg: CrabPlusConfig) -> dict:
    return {k: jnp.asarray(v) for k, v in thinker_batch(arrays, cfg).items()}


def tolerance(manifest: dict, fixture: str) -> float:
    return manifest["fixtures"][fixture]["suggested_tolerance"]["suggested_atol_relative_to_max_abs_of_reference"]


def random_thinker_batch(batch_size: int, seq_len: int = 256):
    """``(family, cfg, batch)``: the tiny thinker's config and one batch of Crab+'s random source
    (every placeholder kind present) at ``seq_len`` tokens."""
    from crab_jax.config.schema import get_config
    from crab_jax.config.sections import RunConfig
    from crab_jax.families import get
    from crab_jax.families.crab_plus.presets import tiny_thinker_config

    family, cfg = get("crab_plus"), tiny_thinker_config()
    c = get_config()
    c.model.family, c.data.seq_len = "crab_plus", seq_len
    spec = family.batch.spec(RunConfig.from_config(c).data, cfg, batch_size)
    return family, cfg, next(iter(family.batch.random_batches(spec, cfg, 0)))
