"""``to-jax --select-layers`` with negative taps (LLaVA-style configs: -1 = the last layer, as
HF's ``hidden_states`` indexing): accepted in both spellings, and the converted model taps
the same hidden states as with the positive indexes."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.cli.convert_weights.cli import main
from crab_jax.families.crab import config_io
from crab_jax.models.clip import ClipVisualEncoder
from crab_jax.models.state_dict import load_flat

pytestmark = pytest.mark.parity


def _taps(fixtures_dir, manifest):
    """(the manifest's taps, the same taps counted from the end: k - (layers + 1))."""
    c = manifest["fixtures"]["crab_full"]["config"]
    hidden_states = c["clip_vision_config"]["num_hidden_layers"] + 1  # 0 = embeddings
    positive = [int(k) for k in c["select_layer_list"]]
    return positive, [k - hidden_states if k >= 0 else k for k in positive]


def _convert(fixtures_dir, out, *select_args) -> ClipVisualEncoder:
    """The fixture's CLIP converted with ``select_args``, loaded into the encoder its config describes."""
    code = main(["to-jax", "--out", str(out), "--clip", str(fixtures_dir / "crab_full" / "clip_vision"), *select_args])
    assert code == 0
    clip = config_io.sections_from_json(config_io.read_json(out))["clip"]
    encoder = ClipVisualEncoder(clip, rngs=nnx.Rngs(0))
    flat = orbax_io.restore_flat(out)
    load_flat(encoder, {k.removeprefix("visual_encoder."): v for k, v in flat.items()}, source=str(out))
    return encoder


def test_negative_taps_equal_the_positive_ones(fixtures_dir, manifest, tmp_path):
    positive, negative = _taps(fixtures_dir, manifest)
    assert any(k < 0 for k in negative)
    ref = _convert(fixtures_dir, tmp_path / "pos", "--select-layers", ",".join(map(str, positive)))
    spelled = {
        "separate": ["--select-layers", ",".join(map(str, negative))],  # read as a flag before the fix
        "joined": ["--select-layers=" + ",".join(map(str, negative))],
    }
    vision = ref.cfg.vision
    video = np.random.default_rng(0).standard_normal(
        (1, 2, vision.num_channels, vision.image_size, vision.image_size)).astype(np.float32)
    expected = np.asarray(ref(video))
    for name, args in spelled.items():
        encoder = _convert(fixtures_dir, tmp_path / name, *args)
        assert encoder.cfg.select_layer_list == tuple(negative), name  # the config keeps what was asked
        np.testing.assert_array_equal(np.asarray(encoder(video)), expected, err_msg=name)


def test_bad_select_layers_is_a_clear_error(fixtures_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["to-jax", "--out", str(tmp_path / "x"), "--clip", str(fixtures_dir / "crab_full" / "clip_vision"),
              "--select-layers", "-1,last"])
    assert "expected integers separated by commas" in capsys.readouterr().err
