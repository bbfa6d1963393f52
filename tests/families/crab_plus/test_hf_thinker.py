"""CrabPlusThinker against HF transformers' ``Qwen2_5OmniThinkerForConditionalGeneration``.

The second reference (the fixtures are the first): the pinned transformers' thinker (torch,
CPU, fp32, eager attention) from a tiny random config (:mod:`.hf_thinker_helpers`), its
weights copied through the family's converter table, both fed the same processor-format
inputs of ~500 tokens: text only, images, multi-frame videos, audio, audio + video (+ an
image), each left- and right-padded. HF computes its own M-RoPE positions from the grids,
so the logits check the whole chain (layout, towers, splice, positions, decoder).

* logits within fp32 tolerance of max |logit|: every position with right padding (the
  original's padding: pads attend to the valid tokens before them, and their logits matter);
  valid positions with left padding (a left pad attends to nothing, so its row is whatever
  each side does with a fully masked softmax — no model ever reads it);
* position ids: :func:`crab_jax.models.mrope.rope_index` equals HF's ``get_rope_index``
  exactly (Crab+'s settings: ``use_audio_in_video=False``, 2 s per temporal grid);
* negative controls: a permuted ``mrope_section`` (same sum) must fail on every batch with
  an image or video and must still match on text / audio-only batches, whose positions are
  equal on all three streams; a halved seconds-per-grid (transformers 4.57.6's processor
  default when an fps is passed) must give other video positions.
"""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.families.crab_plus.layout import thinker_batch
from crab_jax.models.mrope import rope_index
from tests.conftest import assert_parity
from tests.families.crab_plus import hf_thinker_helpers as H

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

HF_RTOL = 1e-5  # both sides fp32 on CPU; observed ~1e-6
SEQ_LEN = 512
PADDINGS = ("left", "right")
# Per case, two samples of segments (see hf_thinker_helpers.processor_inputs); both rows pad.
CASES = {
    "text": [[("text", 500)], [("text", 430)]],
    "image": [[("text", 200), ("image", 1), ("text", 100), ("image", 1), ("text", 150)],
              [("text", 50), ("image", 1), ("text", 350)]],
    "video": [[("text", 100), ("video", 3), ("text", 300)], [("text", 30), ("video", 2), ("text", 350)]],
    "audio": [[("text", 100), ("audio", 37), ("text", 300), ("audio", 23), ("text", 20)],
              [("audio", 60), ("text", 400)]],
    "audio_video": [[("text", 20), ("video", 3), ("audio", 45), ("text", 380)],
                    [("text", 40), ("image", 1), ("video", 2), ("audio", 29), ("text", 300)]],
}
KEYS = [(case, padding) for case in CASES for padding in PADDINGS]


def _visual(case: str) -> bool:
    return any(kind in ("image", "video") for sample in CASES[case] for kind, _ in sample)


def _wrong_split(split) -> tuple[int, ...]:
    """The split rotated by one stream: same sum, other widths per stream."""
    wrong = tuple(split[1:]) + tuple(split[:1])
    assert wrong != tuple(split) and sum(wrong) == sum(split)
    return wrong


@pytest.fixture(scope="module")
def hf():
    return H.hf_thinker()


@pytest.fixture(scope="module")
def cfg(hf):
    return H.crab_config(hf[1])


@pytest.fixture(scope="module")
def inputs(cfg):
    """``{(case, padding): processor-format inputs}``; the same tokens / media for both paddings."""
    out = {}
    for seed, (case, padding) in enumerate(KEYS):
        out[case, padding] = H.processor_inputs(CASES[case], cfg, SEQ_LEN, padding, seed=seed // len(PADDINGS))
        assert not out[case, padding]["attention_mask"].all(-1).any(), f"{case}: every row must be padded"
    return out


@pytest.fixture(scope="module")
def batches(inputs, cfg):
    slots = H.common_slots(list(inputs.values()), cfg)
    return {key: thinker_batch(x, cfg, **slots) for key, x in inputs.items()}


@pytest.fixture(scope="module")
def references(hf, inputs):
    return {key: H.hf_logits(hf[0], x) for key, x in inputs.items()}


@pytest.fixture(scope="module")
def forward(hf, cfg):
    return H.crab_forward(H.crab_thinker(hf[0], cfg))


def _compare(out, ref, mask, padding):
    """``(ours, reference)`` at the positions compared (see the module docstring)."""
    if padding == "right":
        return out, ref
    return out[mask.astype(bool)], ref[mask.astype(bool)]


@pytest.mark.parametrize("case,padding", KEYS)
def test_logits_match_hf(case, padding, inputs, batches, references, forward):
    out = forward(batches[case, padding])
    ours, ref = _compare(out, references[case, padding], inputs[case, padding]["attention_mask"], padding)
    assert np.isfinite(out).all()
    assert_parity(ours, ref, f"thinker logits vs HF ({case}, {padding} padding)", HF_RTOL)


@pytest.mark.parametrize("case,padding", KEYS)
def test_rope_index_matches_hf(case, padding, hf, cfg, inputs, batches):
    x = inputs[case, padding]
    ref_pos, ref_deltas = H.hf_rope_index(hf[0], x)
    frames = x["feature_attention_mask"].sum(-1) if "feature_attention_mask" in x else None
    kwargs = dict(image_grid_thw=x.get("image_grid_thw"), video_grid_thw=x.get("video_grid_thw"),
                  audio_mel_frames=frames)
    pos, deltas = rope_index(x["input_ids"], x["attention_mask"], cfg.rope_tokens,
                             video_second_per_grid=x.get("video_second_per_grid"), **kwargs)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(deltas, ref_deltas)
    # The batch carries them batch-major ([b, 3, S]); HF's forward stores deltas - pads.
    np.testing.assert_array_equal(batches[case, padding]["position_ids"].swapaxes(0, 1), ref_pos)
    pads = (1 - x["attention_mask"]).sum(-1, keepdims=True)
    np.testing.assert_array_equal(batches[case, padding]["rope_deltas"], ref_deltas - pads)
    # Text and audio take one position on all three streams; image / video blocks do not.
    streams_equal = bool((ref_pos == ref_pos[:1]).all())
    assert streams_equal != _visual(case), f"{case}: streams equal = {streams_equal}"
    if "video_grid_thw" in x:  # negative control: another t step must change the video positions
        halved, _ = rope_index(x["input_ids"], x["attention_mask"], cfg.rope_tokens,
                               video_second_per_grid=x["video_second_per_grid"] / 2, **kwargs)
        assert (halved != ref_pos).any()


@pytest.fixture(scope="module")
def wrong_forward(hf, cfg):
    split = cfg.text.mrope_section
    return H.crab_forward(H.crab_thinker(hf[0], H.crab_config(hf[1], mrope_section=_wrong_split(split))))


@pytest.mark.parametrize("case,padding", KEYS)
def test_wrong_mrope_split_fails_only_with_vision(case, padding, inputs, batches, references, wrong_forward):
    """Negative control: a permuted split breaks image / video batches, not text / audio ones."""
    ours, ref = _compare(wrong_forward(batches[case, padding]), references[case, padding],
                         inputs[case, padding]["attention_mask"], padding)
    name = f"thinker logits vs HF, wrong mrope_section ({case}, {padding} padding)"
    if _visual(case):
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        print(f"negative control {name}: rel err {err:.3e}")
        assert err > 100 * HF_RTOL, f"{name}: a wrong split still matches HF (rel err {err:.3e})"
    else:  # the split cannot matter: every stream holds the same position
        assert_parity(ours, ref, name, HF_RTOL)
