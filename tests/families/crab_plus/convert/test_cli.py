"""The Crab+ converter's command line beyond the round trips: ``inspect`` of each file kind,
``--help``, and ``from-run`` of a training run's (scanned, trainable-only) checkpoint."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.converted import nest, per_layer_names
from crab_jax.families.crab_plus.convert import config_io
from crab_jax.families.crab_plus.convert.variables import model_variables, part_of, replace_towers
from tests.families.crab_plus.convert.conftest import cli, torch_load, write_hf_dir

pytestmark = pytest.mark.parity
# The first module path component of a thinker key -> its tower (what `inspect` groups by).
TOWER = {"model": "text", "lm_head": "text", "visual": "vision", "audio_tower": "audio"}


def groups(keys, prefix: str, label: str) -> Counter:
    """``'<label>:<tower>' -> count`` of the keys under ``prefix``, counted from the names alone."""
    return Counter(f"{label}:{TOWER[k[len(prefix):].split('.', 1)[0]]}" for k in keys)


def listed_groups(printed: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^  (\S+:\S+): (\d+) keys$", printed, re.M)}


def test_inspect_groups_the_hf_dir_and_the_adapter(tiny, hf_state, adapter_state, capsys):
    hf, adapter, _ = tiny
    assert cli("inspect", hf, "--summary") == 0
    printed = capsys.readouterr().out
    assert listed_groups(printed) == groups(hf_state, "thinker.", "hf") and "keys no mapping row matches: 0" in printed
    assert cli("inspect", adapter) == 0  # with the tensor list
    printed = capsys.readouterr().out
    assert listed_groups(printed) == groups(adapter_state, "base_model.model.", "adapter")
    assert all(k in printed for k in adapter_state)


def test_inspect_names_skipped_and_unknown_keys(tiny, hf_state, tmp_path, capsys):
    extra = {"talker.model.norm.weight": torch.ones(2), "token2wav.code2wav_dit_model.proj.weight": torch.ones(2),
             "thinker.model.junk.weight": torch.ones(2)}
    src = write_hf_dir(tmp_path / "src", tiny[0], {"model.safetensors": {**hf_state, **extra}})
    assert cli("inspect", src, "--summary") == 0
    printed = capsys.readouterr().out
    got = listed_groups(printed)
    assert got.pop("skipped:talker") == 1 and got.pop("skipped:token2wav") == 1
    assert got == groups(hf_state, "thinker.", "hf")
    assert "keys no mapping row matches: 1\n  thinker.model.junk.weight" in printed


def test_inspect_a_converted_checkpoint(converted, crab_plus_manifest, capsys):
    lora = crab_plus_manifest["fixtures"]["state_dict_names"]["config"]["tiny_lora"]
    assert cli("inspect", converted, "--summary") == 0
    printed = capsys.readouterr().out
    assert "contents: ['base', 'adapter']" in printed
    assert f"I-LoRA: r {lora['r']}, {lora['lora_nums']} heads, alpha {lora['lora_alpha']:g}" in printed
    assert "every array matches the config's model" in printed and "arrays no mapping row matches: 0" in printed


def test_to_jax_help_names_the_crab_plus_sources(capsys):
    with pytest.raises(SystemExit) as e:
        cli("to-jax", "--help")
    printed = capsys.readouterr().out
    assert e.value.code == 0
    for option in ("--hf DIR", "--adapter FILE", "--lora-alpha", "--lora-r", "--lora-heads", "finetune_weights.bin"):
        assert option in printed, option


def test_to_torch_of_a_part_the_checkpoint_lacks(tiny, tmp_path, capsys):
    """A base-only checkpoint has no adapter to write: exit status 1 saying what it holds."""
    assert cli("to-jax", "--out", tmp_path / "j", "--hf", tiny[0]) == 0
    assert cli("to-torch", tmp_path / "j", "--format", "adapter", "--out", tmp_path / "a.bin") == 1
    assert "holds ['base'] only" in capsys.readouterr().err and not (tmp_path / "a.bin").exists()


def fake_run(converted, workdir, step: int) -> dict[str, np.ndarray]:
    """A training run's checkpoint as ``crab_jax.checkpoints.run`` lays it out (``checkpoints/<step>/
    params``): the trainable I-LoRA weights of the SCANNED model (layers stacked), new values.
    Returns the run's arrays by their canonical (per-layer) names."""
    cfg = config_io.load_config(converted).thinker
    scanned = {k: s for k, (s, _) in model_variables(replace_towers(cfg, scan_layers=True)).items()
               if part_of(k) == "adapter"}
    canonical = {k: v for k, v in orbax_io.restore_flat(converted).items() if part_of(k) == "adapter"}
    by_layer = per_layer_names(canonical)
    assert set(scanned) == set(by_layer)  # the run's names are the scanned model's
    rng = np.random.default_rng(0)
    run, out = {}, {}
    for name, layers in by_layer.items():
        run[name] = rng.standard_normal(scanned[name]).astype(np.float32)
        out.update({layers[i]: run[name][i] for i in range(run[name].shape[0])})
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_handlers={"params": ocp.StandardCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(nest(run))))
    manager.wait_until_finished()
    manager.close()
    return out


def test_from_run_puts_a_runs_adapters_over_the_base(converted, tiny, tmp_path, capsys):
    trained = fake_run(converted, tmp_path / "run", step=7)
    assert cli("from-run", tmp_path / "run", "--base", converted, "--out", tmp_path / "ft") == 0
    assert "step 7" in capsys.readouterr().out
    merged, base = orbax_io.restore_flat(tmp_path / "ft"), orbax_io.restore_flat(converted)
    assert sorted(merged) == sorted(base)
    for k, v in merged.items():
        np.testing.assert_array_equal(v, trained.get(k, base[k]), err_msg=k)
    assert config_io.load_config(tmp_path / "ft") == config_io.load_config(converted)
    # The trained adapter exports to the original's file layout and back.
    assert cli("to-torch", tmp_path / "ft", "--format", "adapter", "--out", tmp_path / "ft.bin") == 0
    exported, original = torch_load(tmp_path / "ft.bin"), torch_load(tiny[1])
    assert {k: (v.shape, v.dtype) for k, v in exported.items()} == {k: (v.shape, v.dtype) for k, v in original.items()}
    assert all(not torch.equal(exported[k], original[k]) for k in original)
    assert cli("to-jax", "--out", tmp_path / "back", "--adapter", tmp_path / "ft.bin", "--config", tmp_path / "ft") == 0
    back = orbax_io.restore_flat(tmp_path / "back")
    assert sorted(back) == sorted(trained) and all(np.array_equal(back[k], trained[k]) for k in trained)
