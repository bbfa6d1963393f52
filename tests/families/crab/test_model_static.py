"""Static-shape contract of Crab.__call__: one compile for any batch composition, and
padded media slots never reach the outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.data.text.sequence import MediaBlock, expand_placeholders, left_pad_batch, mask_token_positions
from crab_jax.families.crab.model import Crab, media_layout
from crab_jax.families.crab.presets import tiny_crab_config

FRAME_SLOTS, AUDIO_SLOTS, FRAMES_PER_SEGMENT, SEQ = 3, 2, 32, 48


def _batch(cfg, specs, rng):
    """specs: per sample (visual token, real frames, real audio segments, task is seg?)."""
    ids = cfg.special_token_ids
    layout = media_layout(cfg, FRAME_SLOTS, AUDIO_SLOTS)
    qv, qa = cfg.visual_qformer.num_query_tokens, cfg.audio_qformer.num_query_tokens
    samples, raws = [], []
    for token, frames, segments, seg in specs:
        text = list(rng.integers(3, 60, size=6))
        raw = [1] + text[:2] + [ids[token], ids["<audio>"]] + text[2:]
        if seg:
            raw += [ids[f"<mask_{i}>"] for i in range(6)]
        labels = [-100] * (len(raw) - 3) + raw[-3:]
        blocks = {ids[token]: MediaBlock(layout.visual_offset, frames * qv),
                  ids["<audio>"]: MediaBlock(layout.audio_offset, segments * qa)}
        samples.append(expand_placeholders(raw, labels, blocks))
        raws.append(raw)
    batch = left_pad_batch(samples, SEQ, cfg.pad_token_id)
    batch["mask_positions"] = np.stack([
        mask_token_positions(raw, cfg.mask_token_ids, expansion_shift=s.expansion_shift,
                             pad_left=int(p), is_seg=spec[3], fallback_raw_positions=cfg.nonseg_mask_positions)
        for raw, s, p, spec in zip(raws, samples, batch["pad_left"], specs)])
    b, size = len(specs), cfg.clip.vision.image_size
    batch["frames"] = rng.normal(size=(b, FRAME_SLOTS, 3, size, size)).astype(np.float32)
    batch["fbank"] = rng.normal(size=(b, AUDIO_SLOTS, FRAMES_PER_SEGMENT, 128)).astype(np.float32)
    batch["is_seg"] = np.array([s[3] for s in specs])
    batch["is_avss"] = np.zeros(b, bool)
    batch["seg_frame"] = np.zeros(b, np.int32)
    batch["gt_mask"] = (rng.random((b, 1, size, size)) > 0.5).astype(np.float32)
    batch.pop("pad_left")
    return batch


def test_batch_composition_does_not_recompile_and_padding_is_inert():
    cfg = tiny_crab_config()
    model = Crab(cfg, rngs=nnx.Rngs(0))
    model.eval()
    traces = []

    @nnx.jit
    def forward(model, batch):
        traces.append(1)
        out = model(batch)
        return out.logits, out.lm_loss, out.mask_loss, out.binary_logits

    rng = np.random.default_rng(0)
    video_audio = _batch(cfg, [("<video>", 3, 2, False), ("<image>", 1, 1, True)], rng)
    mixed = _batch(cfg, [("<image>", 1, 2, True), ("<video>", 2, 1, False)], rng)
    out_a = forward(model, video_audio)
    out_b = forward(model, mixed)
    assert len(traces) == 1, "a new batch composition recompiled the forward"
    assert all(np.isfinite(np.asarray(x)).all() for x in out_a + out_b)

    # Media slots no sample points at (frames 1-2 of an image sample, the unused audio
    # slot) must not change anything.
    noisy = dict(mixed)
    noisy["frames"] = mixed["frames"].copy()
    noisy["frames"][0, 1:] = 100.0
    noisy["fbank"] = mixed["fbank"].copy()
    noisy["fbank"][1, 1:] = -100.0
    out_c = forward(model, noisy)
    for ref, got in zip(out_b, out_c):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert len(traces) == 1

    # ... while a real slot does.
    real = dict(mixed)
    real["frames"] = mixed["frames"].copy()
    real["frames"][1, 1] += 1.0
    assert not np.allclose(np.asarray(forward(model, real)[0]), np.asarray(out_b[0]))


def test_non_segmentation_samples_carry_no_mask_loss():
    cfg = tiny_crab_config()
    model = Crab(cfg, rngs=nnx.Rngs(1))
    model.eval()
    rng = np.random.default_rng(1)
    batch = _batch(cfg, [("<video>", 2, 2, False), ("<image>", 1, 1, True)], rng)

    @nnx.jit
    def forward(model, batch):
        out = model(batch)
        return out.mask_terms, out.mask_loss

    terms, loss = forward(model, jax.tree.map(jnp.asarray, batch))
    terms = np.asarray(terms)
    assert np.all(terms[0] == 0) and np.all(terms[1, :2] > 0)
    changed = dict(batch)
    changed["gt_mask"] = batch["gt_mask"].copy()
    changed["gt_mask"][0] = 1 - changed["gt_mask"][0]
    np.testing.assert_allclose(forward(model, jax.tree.map(jnp.asarray, changed))[1], loss, rtol=1e-6)



@pytest.mark.slow
# ~80-100 s on 2 cores: outside CI's default selection (-m heavy). CI keeps seg_chunk's mask loss
# equal to the full decode's (tests/benchmarks/test_seg_mask_loss.py) and map_selected's values
# and gradients (tests/models/test_selected.py).
@pytest.mark.heavy
def test_seg_chunk_decodes_only_seg_samples_with_the_same_loss_and_gradient():
    """``seg_chunk = k``: the mask decoder runs on the segmentation samples only, k at a time, and
    the mask loss, the seg samples' masks and every gradient equal the full decode's; the other
    samples' masks are zeros. One compile for any mix of seg samples (none included)."""
    import dataclasses

    cfg = tiny_crab_config()
    cfg = dataclasses.replace(cfg, seg=dataclasses.replace(cfg.seg, avs_query_num=8))  # a quicker compile
    rng = np.random.default_rng(2)
    specs = [("<video>", 2, 2, False), ("<image>", 1, 1, True), ("<video>", 3, 1, False), ("<image>", 1, 2, True),
             ("<image>", 1, 1, True)]
    batch = jax.tree.map(jnp.asarray, _batch(cfg, specs, rng))
    batch["is_avss"] = jnp.asarray([False, False, False, True, False])
    batch["gt_mask"] = batch["gt_mask"].at[3].set(jnp.floor(batch["gt_mask"][3] * 3))
    is_seg = np.asarray(batch["is_seg"])
    model = Crab(cfg, rngs=nnx.Rngs(3))
    model.eval()
    # The encoders once, outside the differentiated part: the branch under test starts at the LLM.
    visual_rows, taps = model.encode_visual(batch["frames"])
    media_rows = jnp.concatenate([visual_rows, model.encode_audio(batch["fbank"])], axis=1)
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              position_ids=batch["position_ids"], labels=batch["labels"], media_rows=media_rows,
              media_index=batch["media_index"], mask_positions=batch["mask_positions"], gt_mask=batch["gt_mask"],
              is_avss=batch["is_avss"], seg_features=model.seg_image_features(taps, batch["is_seg"], batch["seg_frame"]))
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    traces = []

    def run(chunk, is_seg):
        @jax.jit
        def f(params, is_seg):
            traces.append(chunk)

            def loss(p):
                m = nnx.merge(graph, p, rest)
                m.cfg = dataclasses.replace(m.cfg, seg_chunk=chunk)
                out = m.forward_from_media(**kw, is_seg=is_seg)
                return out.lm_loss + out.mask_loss, out
            return jax.value_and_grad(loss, has_aux=True)(params)
        return f

    full_fn, chunked_fn = run(0, None), run(2, None)
    (_, full), full_grads = full_fn(params, batch["is_seg"])
    (_, out), grads = chunked_fn(params, batch["is_seg"])
    np.testing.assert_allclose(out.mask_loss, full.mask_loss, rtol=1e-6)
    np.testing.assert_allclose(out.mask_terms, full.mask_terms, rtol=1e-5, atol=1e-7)
    is_avss = np.asarray(batch["is_avss"])
    for name, reads in (("binary_logits", is_seg & ~is_avss), ("avss_logits", is_seg & is_avss)):
        ours, ref = np.asarray(getattr(out, name)), np.asarray(getattr(full, name))
        np.testing.assert_allclose(ours[reads], ref[reads], rtol=1e-5, atol=1e-5)  # the head each sample reads
        assert not np.any(ours[~is_seg])
    flat, ref = jax.tree.leaves(grads), jax.tree.leaves(full_grads)
    assert len(flat) == len(ref) and any(np.any(np.asarray(g)) for g in flat)
    for g, r in zip(flat, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(r).max())))
    # No seg sample at all: the same compile, a zero mask loss.
    (_, none), _ = chunked_fn(params, jnp.zeros_like(batch["is_seg"]))
    assert float(none.mask_loss) == 0.0 and traces.count(2) == 1


def test_frame_and_audio_chunk_encode_only_the_media_read_with_the_same_outputs():
    """``frame_chunk = k``: CLIP runs only on the frame slots a media token reads (and each seg
    sample's seg_frame); ``audio_chunk = k``: BEATs only on the audio slots read. What the LLM
    and the seg module receive (the spliced embeddings, the seg frame's taps) equals encoding
    every slot; the other slots' taps are zeros. The same for the prompt encoding of generation."""
    import dataclasses

    from crab_jax.families.crab.decoding import encode_prompt
    from crab_jax.families.crab.model import frames_in_use, slots_read

    cfg = tiny_crab_config()
    rng = np.random.default_rng(4)
    specs = [("<video>", FRAME_SLOTS, 2, False), ("<image>", 1, 1, True), ("<video>", FRAME_SLOTS - 1, 1, False)]
    batch = _batch(cfg, specs, rng)
    # Real fbank frames per segment: the second segment of sample 0 half padding, unused slots 0.
    batch["fbank_valid"] = np.array([[FRAMES_PER_SEGMENT if a < segments else 0 for a in range(AUDIO_SLOTS)]
                                     for _, _, segments, _ in specs], np.int32)
    batch["fbank_valid"][0, 1] = FRAMES_PER_SEGMENT // 2
    batch = jax.tree.map(jnp.asarray, batch)
    qv, qa, last = cfg.visual_qformer.num_query_tokens, cfg.audio_qformer.num_query_tokens, FRAME_SLOTS - 1
    read = np.array([[t < frames for t in range(FRAME_SLOTS)] for _, frames, _, _ in specs])
    np.testing.assert_array_equal(frames_in_use(batch["media_index"], FRAME_SLOTS, qv), read)
    seg_frame = jnp.asarray([-1, last, -1])  # the image sample's masks on its last slot
    used = read | (np.arange(FRAME_SLOTS) == last) * np.array([[0], [1], [0]], bool)
    np.testing.assert_array_equal(frames_in_use(batch["media_index"], FRAME_SLOTS, qv, seg_frame), used)
    audio_read = np.array([[a < segments for a in range(AUDIO_SLOTS)] for _, _, segments, _ in specs])
    audio_offset = media_layout(cfg, FRAME_SLOTS, AUDIO_SLOTS).audio_offset
    np.testing.assert_array_equal(slots_read(batch["media_index"], audio_offset, AUDIO_SLOTS, qa), audio_read)
    assert not audio_read.all()  # some slot is skipped

    model = Crab(cfg, rngs=nnx.Rngs(5))
    model.eval()
    per_frame = lambda t: np.asarray(t).reshape(t.shape[0], len(specs), FRAME_SLOTS, -1)

    @nnx.jit
    def encode(model, batch):
        rows, taps = model.encode_media(batch, seg_frame)
        embeds = model.embed(batch["input_ids"], rows, batch["media_index"])
        prompt_embeds, prompt_taps = encode_prompt(model, {**batch, "seg_frame": jnp.maximum(seg_frame, 0)})
        return embeds, taps, prompt_embeds, prompt_taps

    def encoded(frame_chunk, audio_chunk):
        model.cfg = dataclasses.replace(cfg, frame_chunk=frame_chunk, audio_chunk=audio_chunk)
        embeds, taps, prompt_embeds, prompt_taps = encode(model, batch)
        return embeds, per_frame(taps), prompt_embeds, per_frame(prompt_taps)

    full, chunked = encoded(0, 0), encoded(2, 1)
    for name, a, b in zip(("embeds", "taps", "prompt embeds", "prompt taps"), chunked, full):
        if name.endswith("taps"):
            a, b = a[:, used], b[:, used]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.any(chunked[1][:, ~used]) and np.all(np.any(full[1][:, ~used], axis=-1))
    # An unread audio slot is never encoded: NaN there reaches its rows only when BEATs runs on every slot.
    @nnx.jit
    def media_rows(model, batch):
        return model.encode_media(batch)[0]

    poisoned = {**batch, "fbank": batch["fbank"].at[2, 1].set(jnp.nan)}  # sample 2 reads slot 0 only
    slot_rows = lambda: np.asarray(media_rows(model, poisoned))[2, audio_offset + qa:audio_offset + 2 * qa]
    model.cfg = dataclasses.replace(cfg, audio_chunk=1)
    assert np.isfinite(slot_rows()).all()
    model.cfg = cfg
    assert np.isnan(slot_rows()).all()
