"""``to-jax --crab`` reads the original's pretraining files (visual / audio /
segmentation_pretrain.bin), whose keys carry the bare Crab names (``model.…`` /
``lm_head.…``: pretraining runs without the PEFT wrapper, spec A.7.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.cli.convert_weights.cli import main
from crab_jax.families.crab import config_io
from crab_jax.families.crab.convert.assemble import SEG_BUFFERS
from crab_jax.families.crab.convert.crab_table import CRAB_PREFIX, PEFT_PREFIX, crab_table

pytestmark = pytest.mark.parity

# What each pretraining stage saves (non_lora_trainables.bin: its trainable parameters, by
# the first words of their bare names), spec A.7.2.
PRETRAIN_FILES = {
    "visual_pretrain.bin": ("model.vl_projector.", "model.embed_tokens.", "lm_head."),
    "audio_pretrain.bin": ("model.al_projector.", "model.embed_tokens.", "lm_head."),
    "segmentation_pretrain.bin": ("model.seg_module.",),
}
# Buffers, which the original's save functions (named_parameters) never collect.
BUFFERS = {CRAB_PREFIX + b for b in SEG_BUFFERS}


def _is_parameter(full_name: str) -> bool:
    return full_name not in BUFFERS and not full_name.endswith(".position_ids")


@pytest.fixture(scope="module")
def pretrain_files(fixtures_dir, tmp_path_factory):
    """``{file name: {bare name: array}}``, written as torch.save'd dicts into one folder."""
    full = open_tensors(fixtures_dir / "crab_full" / "full_state_dict.safetensors")
    folder = tmp_path_factory.mktemp("pretrain")
    files = {}
    for name, heads in PRETRAIN_FILES.items():
        state = {k.removeprefix(PEFT_PREFIX): np.asarray(full[k]) for k in full
                 if k.removeprefix(PEFT_PREFIX).startswith(heads) and _is_parameter(k)}
        assert state, f"{name}: the fixture's full state dict has no key starting with {heads}"
        torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, folder / name)
        files[name] = state
    return folder, files


@pytest.mark.slow  # a whole-Crab conversion: ~13 s on 2 cores
def test_pretrain_files_convert_with_the_base_files(pretrain_files, fixtures_dir, manifest, tmp_path):
    folder, files = pretrain_files
    f = fixtures_dir / "crab_full"
    taps = manifest["fixtures"]["crab_full"]["config"]["select_layer_list"]
    crab_args = [a for name in PRETRAIN_FILES for a in ("--crab", folder / name)]
    code = main([str(a) for a in ["to-jax", "--out", tmp_path / "w", "--llama", f / "llama_hf", "--clip",
                                  f / "clip_vision", "--beats", f / "beats_tiny.pt", "--bert-config",
                                  f / "bert_config", "--select-layers", ",".join(map(str, taps)), *crab_args]])
    assert code == 0
    cfg = config_io.load_crab_config(tmp_path / "w")
    back = crab_table(cfg).to_torch(orbax_io.restore_flat(tmp_path / "w"))
    for name, state in files.items():  # every tensor of the pretraining files, under its full name
        for k, value in state.items():
            assert np.array_equal(back[PEFT_PREFIX + k], value), f"{name}:{k}: values differ"
    full = open_tensors(f / "full_state_dict.safetensors")
    assert set(back) <= set(full)  # no LoRA (no fine-tuning file given); every other tensor as the original's
    for k in back:
        if k not in BUFFERS:  # the seg module's random Fourier matrices are drawn (in no file)
            assert np.array_equal(back[k], full[k]), f"{k}: values differ from the original's"


def test_inspect_matches_pretrain_keys(pretrain_files, capsys):
    folder, _ = pretrain_files
    for name in PRETRAIN_FILES:
        assert main(["inspect", "--summary", str(folder / name)]) == 0
        out = capsys.readouterr().out
        assert "keys no mapping row matches: 0" in out, out
