"""The one Crab+ mapping table at the REAL size: it maps exactly the released thinker's keys
(``state_dict_names/real_thinker_keys.json``: every base key and all adapter keys, shapes
included) and nothing else; plus the pieces around it (variables, layout, config file)."""

from __future__ import annotations

import json

import pytest

from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.families.crab_plus.convert import config_io
from crab_jax.families.crab_plus.convert.adapter_files import adapter_layout
from crab_jax.families.crab_plus.convert.inspection import classify_keys
from crab_jax.families.crab_plus.convert.thinker_table import thinker_table, torch_layout
from crab_jax.families.crab_plus.convert.variables import expected_variables, model_variables, thinker_variables
from crab_jax.families.crab_plus.hf_config import thinker_config_from_hf
from crab_jax.models.ilora import ILoRAConfig


def _lora(section: dict) -> ILoRAConfig:
    return ILoRAConfig(r=section["r"], alpha=section["lora_alpha"], num_heads=section["lora_nums"],
                       dropout=section["lora_dropout"])


@pytest.fixture(scope="module")
def real(crab_plus_fixtures_dir, crab_plus_manifest):
    """``(real-size config, {'base': torch key -> shape, 'adapter': ...})`` from the fixtures."""
    c = crab_plus_manifest["fixtures"]["state_dict_names"]["config"]
    cfg = thinker_config_from_hf(c["real_thinker_config_full"], lora=_lora(c["real_lora"]))
    names = json.loads((crab_plus_fixtures_dir / "state_dict_names" / "real_thinker_keys.json").read_text())
    keys = {"base": {k: tuple(s) for k, s in names["base_checkpoint_thinker"].items()},
            "adapter": {k: tuple(s) for k, s in names["adapter"].items()}}
    return cfg, keys


def _torch_keys(cfg, part: str) -> dict[str, tuple]:
    shapes = {k: s for k, (s, _) in expected_variables(cfg, [part]).items()}
    return {k: s for k, (_, s) in torch_layout(thinker_table(cfg), shapes).items()}


@pytest.mark.parametrize("part", ["base", "adapter"])
def test_real_size_table_names_exactly_the_released_keys(real, part):
    """nnx.eval_shape of the real config (nothing allocated) -> the table's torch keys and shapes
    equal the original's, key for key (the adapter file: every one of its keys)."""
    cfg, keys = real
    got = _torch_keys(cfg, part)
    assert sorted(set(got) - set(keys[part])) == [] and sorted(set(keys[part]) - set(got)) == []
    assert got == keys[part]
    table, expected = thinker_table(cfg), thinker_variables(cfg)
    for key in keys[part]:  # the forward direction: every released key lands on a model variable
        hit = table.torch_key_to_jax(key)
        assert hit is not None and hit[1] in expected, key


def test_real_size_without_lora_has_no_adapter_keys(real):
    """Negative control: the same config without I-LoRA maps the base keys only."""
    import dataclasses

    cfg, keys = real
    plain = dataclasses.replace(cfg, lora=None)
    assert _torch_keys(plain, "base") == keys["base"]
    assert expected_variables(plain, ["adapter"]) == {}
    assert all(thinker_table(plain).torch_key_to_jax(k) is None for k in keys["adapter"])


def test_real_adapter_layout_is_read_from_the_shapes(real, crab_plus_manifest):
    _, keys = real
    lora = crab_plus_manifest["fixtures"]["state_dict_names"]["config"]["real_lora"]
    layout = adapter_layout(keys["adapter"], source="real")
    assert (layout.r, layout.heads) == (lora["r"], lora["lora_nums"])
    assert layout.modules * (layout.heads + 2) == len(keys["adapter"])


def test_scanned_build_names_the_same_variables_as_the_unscanned_one(tiny):
    """The converter builds the model scanned (fast eval_shape) and names it per layer: that must
    be exactly the unscanned model's variables (names, shapes, dtypes)."""
    hf, _, alpha = tiny
    cfg = thinker_config_from_hf(json.loads((hf / "config.json").read_text()), lora=ILoRAConfig(r=2, alpha=alpha))
    assert thinker_variables(cfg) == model_variables(cfg)


def test_classify_keys_of_the_released_files(real):
    _, keys = real
    extra = ["talker.model.layers.0.mlp.up_proj.weight", "token2wav.code2wav_dit_model.x.weight", "thinker.junk.w"]
    matched, unmatched = classify_keys([*keys["base"], *keys["adapter"], *extra])
    assert unmatched == ["thinker.junk.w"]
    labels = {matched[k] for k in keys["base"]} | {matched[k] for k in keys["adapter"]}
    assert labels == {"hf:text", "hf:vision", "hf:audio", "adapter:text", "adapter:vision", "adapter:audio"}
    assert matched[extra[0]] == "skipped:talker" and matched[extra[1]] == "skipped:token2wav"


def test_config_file_round_trip(real, converted):
    cfg, _ = real
    saved = config_io.load_config(converted)
    assert saved.contents == ("base", "adapter") and saved.hf_config is not None
    for config in (saved, config_io.CheckpointConfig(cfg, ("adapter",))):
        assert config_io.config_from_json(json.loads(json.dumps(config_io.config_to_json(config)))) == config
    bad = config_io.config_to_json(saved)
    bad["thinker"]["text"]["no_such_field"] = 1
    with pytest.raises(ValueError, match="no_such_field"):
        config_io.config_from_json(bad)
    with pytest.raises(ValueError, match="contents"):
        config_io.CheckpointConfig(saved.thinker, ("base", "extra"))


def test_adapter_layout_names_disagreeing_modules(real):
    _, keys = real
    shapes = dict(keys["adapter"])
    key = next(k for k in shapes if k.endswith(".lora_A.weight"))
    shapes[key] = (shapes[key][0] // 2, shapes[key][1])
    with pytest.raises(MappingError, match="different ranks") as e:
        adapter_layout(shapes, source="f.bin")
    assert key in str(e.value)
