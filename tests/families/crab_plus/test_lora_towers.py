"""``CrabPlusConfig.lora_towers``: I-LoRA in a subset of the three towers (the LLM-only variant
of ``benchmarks/thinker_step.py``), its converter view and its config file round trip.

The model is the fixture's tiny thinker (its config.json + the fixture's adapter), built
abstractly: names and shapes only, nothing allocated.
"""

from __future__ import annotations

import dataclasses

import pytest
from flax import nnx

from crab_jax.families.crab_plus.convert.config_io import CheckpointConfig, config_from_json, config_to_json
from crab_jax.families.crab_plus.convert.thinker_table import is_adapter_path
from crab_jax.families.crab_plus.convert.variables import expected_variables
from crab_jax.families.crab_plus.model import LORA_TOWERS, CrabPlusThinker
from crab_jax.models.state_dict import abstract_module, expected_shapes
from tests.families.crab_plus.thinker_helpers import fixture_config

FIXTURE = "state_dict_names"
# Each tower's first path component in CrabPlusThinker (the LLM's lm_head has no adapter).
PREFIX = {"text": "model.", "vision": "visual.", "audio": "audio_tower."}


@pytest.fixture(scope="module")
def full_cfg(crab_plus_fixtures_dir, crab_plus_manifest):
    cfg = fixture_config(crab_plus_fixtures_dir, crab_plus_manifest, FIXTURE)
    assert cfg.lora is not None and cfg.lora_towers == LORA_TOWERS  # the default: the released recipe
    return cfg


@pytest.fixture(scope="module")
def llm_cfg(full_cfg):
    return dataclasses.replace(full_cfg, lora_towers=("text",))


def adapter_shapes(cfg) -> dict:
    shapes = expected_shapes(abstract_module(lambda: CrabPlusThinker(cfg, rngs=nnx.Rngs(0))))
    return {k: v for k, v in shapes.items() if is_adapter_path(k)}


def test_llm_only_has_adapters_only_in_the_llm(full_cfg, llm_cfg):
    full, llm = adapter_shapes(full_cfg), adapter_shapes(llm_cfg)
    # Negative control: the full model's towers do have adapters, so the check below can fail.
    for tower, prefix in PREFIX.items():
        assert any(k.startswith(prefix) for k in full), f"the full model has no {tower} adapters"
    assert llm, "the LLM-only model has no adapters at all"
    outside = [k for k in llm if not k.startswith(PREFIX["text"])]
    assert not outside, f"adapters outside the LLM: {outside[:5]}"
    assert llm == {k: v for k, v in full.items() if k.startswith(PREFIX["text"])}


def test_towers_without_adapters_keep_their_base_weights(full_cfg, llm_cfg):
    full = expected_shapes(abstract_module(lambda: CrabPlusThinker(full_cfg, rngs=nnx.Rngs(0))))
    llm = expected_shapes(abstract_module(lambda: CrabPlusThinker(llm_cfg, rngs=nnx.Rngs(0))))
    assert llm == {k: v for k, v in full.items() if not is_adapter_path(k) or k.startswith(PREFIX["text"])}


@pytest.mark.parametrize("towers", [("vision",), ("text", "audio"), ()])
def test_any_subset(full_cfg, towers):
    names = adapter_shapes(dataclasses.replace(full_cfg, lora_towers=towers))
    have = {t for t, p in PREFIX.items() if any(k.startswith(p) for k in names)}
    assert have == set(towers)


def test_converter_expects_only_the_llm_adapters(full_cfg, llm_cfg):
    full = expected_variables(full_cfg, ("adapter",))
    llm = expected_variables(llm_cfg, ("adapter",))
    assert llm and all(k.startswith(PREFIX["text"]) for k in llm), sorted(set(llm))[:5]
    assert llm == {k: v for k, v in full.items() if k.startswith(PREFIX["text"])}
    assert len(full) > len(llm)  # the full model's tower adapters are expected there
    assert expected_variables(llm_cfg, ("base",)) == expected_variables(full_cfg, ("base",))


def test_config_file_round_trip_keeps_the_field(llm_cfg):
    written = config_to_json(CheckpointConfig(llm_cfg, ("base", "adapter")))
    assert written["thinker"]["lora_towers"] == ["text"]
    back = config_from_json(written)
    assert back.thinker == llm_cfg and back.thinker.lora_towers == ("text",)


def test_config_file_without_the_field_loads_the_default(llm_cfg):
    written = config_to_json(CheckpointConfig(llm_cfg, ("base", "adapter")))
    del written["thinker"]["lora_towers"]  # a file written before the field existed
    assert config_from_json(written).thinker.lora_towers == LORA_TOWERS


def test_unknown_tower_fails_naming_it(full_cfg):
    with pytest.raises(ValueError, match=r"lora_towers.*'llm'.*one of \['text', 'vision', 'audio'\]"):
        dataclasses.replace(full_cfg, lora_towers=("text", "llm"))
    written = config_to_json(CheckpointConfig(full_cfg, ("base",)))
    written["thinker"]["lora_towers"] = ["audio", "speech"]
    with pytest.raises(ValueError, match="'speech'"):
        config_from_json(written)
