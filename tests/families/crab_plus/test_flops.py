"""``thinker_flops`` (the MFU numerator) against an independent count: the matmuls of the
thinker's own lowered programs.

Reference: the StableHLO of each tower's forward (``jax.jit(...).lower(...)`` on abstract
weights, nothing compiled or allocated) with every ``dot_general`` counted as
``2 * prod(result) * prod(contracted dims)`` and every ``convolution`` as
``2 * prod(result) * kernel_width * in_channels``: the program's matmul FLOPs, whatever
formula ``flops.py`` uses. The model is the ``tiny`` preset widened :data:`WIDEN` times (so
matmuls dominate, as at real sizes) with ``scan_layers=False`` (every layer is its own op).

Tolerance :data:`RTOL` = 0.1%: the one known difference is the audio projection, which
``thinker_flops`` applies to ``n_window / 2`` rows per chunk (252 for 10 s at the tiny
``n_window``) while the program projects the 250 pooled tokens. At the tiny 56 px frames a
vision window covers the whole slice, so windowed and full attention cost the same here.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.families.crab_plus.batch_spec import DEFAULT_AUDIO_SECONDS, DEFAULT_FRAMES, BatchSpec, audio_slots_for
from crab_jax.families.crab_plus.flops import thinker_flops
from crab_jax.families.crab_plus.model import CrabPlusThinker
from crab_jax.families.crab_plus.presets import tiny_thinker_config
from crab_jax.models.ilora import ILoRAConfig
from crab_jax.models.state_dict import path_str

WIDEN = 8
SEQ = 128
RTOL = 1e-3
TOWERS = ("visual", "audio_tower")
_TYPE = re.compile(r"tensor<([\dx]+)x[a-z]+\d*>")


def wide_config(lora: ILoRAConfig | None):
    """The tiny thinker with every tower's width and head count x WIDEN (head widths kept, so the
    M-RoPE split still fits), no vocabulary padding."""
    cfg = tiny_thinker_config()
    t, v, a = cfg.text, cfg.vision, cfg.audio
    text = dataclasses.replace(t, hidden_size=WIDEN * t.hidden_size, intermediate_size=WIDEN * t.intermediate_size,
                               num_attention_heads=WIDEN * t.num_attention_heads,
                               num_key_value_heads=WIDEN * t.num_key_value_heads, head_dim=None, vocab_pad_multiple=1)
    vision = dataclasses.replace(v, hidden_size=WIDEN * v.hidden_size, intermediate_size=WIDEN * v.intermediate_size,
                                 num_heads=WIDEN * v.num_heads, out_hidden_size=text.hidden_size)
    audio = dataclasses.replace(a, d_model=WIDEN * a.d_model, encoder_ffn_dim=WIDEN * a.encoder_ffn_dim,
                                encoder_attention_heads=WIDEN * a.encoder_attention_heads, output_dim=text.hidden_size)
    return dataclasses.replace(cfg, text=text, vision=vision, audio=audio, lora=lora)


def matmul_flops(hlo: str) -> float:
    """Matmul FLOPs of a StableHLO module: its ``dot_general`` and ``convolution`` ops."""
    total = 0
    for line in hlo.splitlines():
        types = [[int(d) for d in t.split("x")] for t in _TYPE.findall(line)]
        if "stablehlo.dot_general" in line:
            contracted = re.search(r"contracting_dims = \[([\d, ]*)\] x", line).group(1)
            total += 2 * np.prod(types[-1]) * np.prod([types[0][int(i)] for i in contracted.split(",")])
        elif "stablehlo.convolution" in line:
            # the audio convs are NWC x WIO -> NWC (qwen_audio.Conv1d): kernel [width, in, out]
            assert "x[0, i, o]" in line, f"unexpected convolution layout: {line.strip()}"
            total += 2 * np.prod(types[-1]) * types[1][0] * types[1][1]
    return float(total)


class Thinker:
    """Abstract weights of one config and the matmul FLOPs of its parts (per sample)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.graphdef, self.state = nnx.split(nnx.eval_shape(lambda: CrabPlusThinker(cfg, rngs=nnx.Rngs(0))))
        self.slices = -(-DEFAULT_FRAMES // cfg.vision.temporal_patch_size)
        self.chunks, self.audio_tokens = audio_slots_for(cfg, DEFAULT_AUDIO_SECONDS)

    def _flops(self, fn, *shapes) -> float:
        def run(state, *args):
            return fn(nnx.merge(self.graphdef, state), *args)

        args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
        return matmul_flops(jax.jit(run).lower(self.state, *args).as_text())

    def llm_forward(self) -> float:
        """Decoder + LM head over SEQ tokens."""
        c, i32 = self.cfg, jnp.int32
        return self._flops(lambda m, e, mask, pos: m.decode(e, mask, pos)[0],
                           ((1, SEQ, c.text.hidden_size), jnp.float32), ((1, SEQ), i32), ((3, 1, SEQ), i32))

    def visual_forward(self) -> float:
        c = self.cfg
        return self._flops(lambda m, x: m.encode_visual(x),
                           ((1, self.slices, c.patches_per_slice, c.patch_dim), jnp.float32))

    def audio_forward(self) -> float:
        a = self.cfg.audio
        return self._flops(lambda m, ch, fr, pool: m.encode_audio(ch, fr, pool),
                           ((1, self.chunks, 2 * a.n_window, a.num_mel_bins), jnp.float32),
                           ((1, self.chunks), jnp.int32), ((1, self.audio_tokens, 2), jnp.int32))

    def lora_paths(self, prefix: str = "") -> list[str]:
        return [p for p in (path_str(k) for k, _ in nnx.to_flat_state(self.state)) if ".lora_" in p
                and p.startswith(prefix)]

    def adapter_params(self, tower: str) -> int:
        flat = {path_str(k): v for k, v in nnx.to_flat_state(self.state)}
        return sum(int(np.prod(flat[p].shape)) for p in self.lora_paths(tower + "."))

    def tower_rows(self, tower: str) -> int:
        """Rows each of the tower's projections sees per sample (patches; audio frames after the conv)."""
        if tower == "visual":
            return self.slices * self.cfg.patches_per_slice
        return self.chunks * self.cfg.audio.n_window


def spec_of(cfg) -> BatchSpec:
    """One sample of SEQ tokens with the family's default media (what the programs below encode)."""
    chunks, tokens = audio_slots_for(cfg, DEFAULT_AUDIO_SECONDS)
    return BatchSpec(batch=1, seq_len=SEQ, visual_slots=-(-DEFAULT_FRAMES // cfg.vision.temporal_patch_size),
                     audio_chunk_slots=chunks, audio_token_slots=tokens)


def per_sample(cfg, paths) -> float:
    return thinker_flops(cfg, spec_of(cfg), paths).per_token * SEQ


@pytest.fixture(scope="module")
def plain():
    return Thinker(wide_config(None))


@pytest.fixture(scope="module")
def adapted():
    return Thinker(wide_config(ILoRAConfig(r=4, alpha=8.0, dropout=0.0)))


def test_each_tower_and_the_llm_match_the_programs_matmuls(plain):
    """No adapters. A frozen tower counts its forward once, a tower the gradient flows through
    twice (forward + activation gradients); so marking one tower as training isolates it."""
    cfg = plain.cfg
    base = per_sample(cfg, [])
    visual = per_sample(cfg, ["visual.blocks.0.mlp.gate_proj.lora_A"]) - base
    audio = per_sample(cfg, ["audio_tower.layers.0.self_attn.q_proj.lora_A"]) - base
    llm = (base - visual - audio) / 2  # the LLM always trains: 2 x forward
    ref = {"llm": plain.llm_forward(), "visual": plain.visual_forward(), "audio": plain.audio_forward()}
    for name, got in (("llm", llm), ("visual", visual), ("audio", audio)):
        assert got == pytest.approx(ref[name], rel=RTOL), (name, got, ref[name])
    # negative control: each part is far above the tolerance, so a tower left out cannot pass
    total = 2 * ref["llm"] + ref["visual"] + ref["audio"]
    assert min(ref.values()) / total > 10 * RTOL
    assert base == pytest.approx(total, rel=RTOL)


def test_tower_adapters_change_the_count_when_they_train(adapted):
    """All three towers' adapters training vs the LLM's alone: each tower adds its forward
    (adapters included) once more and the adapters' weight gradients (2 FLOPs per weight per row)."""
    cfg = adapted.cfg
    llm_only = per_sample(cfg, adapted.lora_paths("model."))
    everything = per_sample(cfg, adapted.lora_paths())
    forwards = {"visual": adapted.visual_forward(), "audio_tower": adapted.audio_forward()}
    expected = sum(forwards[t] + 2 * adapted.tower_rows(t) * adapted.adapter_params(t) for t in TOWERS)
    assert all(adapted.adapter_params(t) > 0 for t in TOWERS)
    assert everything - llm_only == pytest.approx(expected, rel=RTOL)
    # one tower at a time adds only its own share
    for tower in TOWERS:
        one = per_sample(cfg, adapted.lora_paths("model.") + adapted.lora_paths(tower + "."))
        own = forwards[tower] + 2 * adapted.tower_rows(tower) * adapted.adapter_params(tower)
        assert one - llm_only == pytest.approx(own, rel=RTOL), tower


def test_remat_recomputes_the_forward_of_every_tower_that_trains(adapted):
    cfg = adapted.cfg
    paths = adapted.lora_paths()
    f = thinker_flops(cfg, spec_of(cfg), paths, remat="full")
    assert thinker_flops(cfg, spec_of(cfg), paths).recompute_per_token == 0.0
    llm_fwd = adapted.llm_forward() - 2 * cfg.text.hidden_size * cfg.text.vocab_size * SEQ  # the head is not rematted
    towers = adapted.visual_forward() + adapted.audio_forward()
    assert f.recompute_per_token * SEQ == pytest.approx(llm_fwd + towers, rel=RTOL)
    # frozen towers recompute nothing
    frozen_towers = thinker_flops(cfg, spec_of(cfg), adapted.lora_paths("model."), remat="full")
    assert frozen_towers.recompute_per_token * SEQ == pytest.approx(llm_fwd, rel=RTOL)


def test_scan_uncounted_is_what_the_scanned_programs_leave_out(plain):
    """With ``scan_layers`` each stack is one loop whose body the program (and XLA's cost analysis)
    holds once; ``scan_uncounted_per_token`` must be exactly the matmuls the unscanned programs
    have beyond the scanned ones (frozen towers: once; the LLM trains: twice)."""
    cfg = plain.cfg
    scanned = Thinker(dataclasses.replace(cfg, **{t: dataclasses.replace(getattr(cfg, t), scan_layers=True)
                                                  for t in ("text", "vision", "audio")}))
    missing = {part: getattr(plain, f"{part}_forward")() - getattr(scanned, f"{part}_forward")()
               for part in ("llm", "visual", "audio")}
    assert all(v > 0 for v in missing.values()), missing  # negative control: the scan does hide layers
    got = thinker_flops(cfg, spec_of(cfg), []).scan_uncounted_per_token * SEQ
    assert got == pytest.approx(2 * missing["llm"] + missing["visual"] + missing["audio"], rel=RTOL)
