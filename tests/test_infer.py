"""Generation (crab_jax.families.crab.decoding) and held-out scoring (crab_jax.evaluation.generation) on a tiny random Crab.

Every decode here uses ONE DecodeConfig and one batch shape, so the whole file compiles the
generator once (the compile-count test checks that a second prompt batch adds none).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crab_jax.families.crab import decoding as D
from crab_jax.evaluation import generation as I
from crab_jax.data.text.sequence import IGNORE_INDEX, MediaBlock, expand_placeholders, left_pad_batch
from crab_jax.families.crab.model import Crab, media_layout
from crab_jax.families.crab.presets import tiny_crab_config

FRAME_SLOTS, AUDIO_SLOTS, FBANK_FRAMES, SEQ = 2, 1, 16, 24
EOS = 2
PAD = 0  # output fill after EOS; differs from EOS so that padding is visible
DCFG = D.DecodeConfig(max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD)
CHAIN_SCALE = 1000.0  # embedding norm of chain tokens: dominates every layer's O(1) output


def prompt_batch(cfg, last_tokens, text_lens, seed):
    """Left-padded prompts ``<s> text <video_start><video><video_end><audio_start><audio><audio_end> last``."""
    rng = np.random.default_rng(seed)
    ids = cfg.special_token_ids
    layout = media_layout(cfg, FRAME_SLOTS, AUDIO_SLOTS)
    qv, qa = cfg.visual_qformer.num_query_tokens, cfg.audio_qformer.num_query_tokens
    blocks = {ids["<video>"]: MediaBlock(layout.visual_offset, FRAME_SLOTS * qv),
              ids["<audio>"]: MediaBlock(layout.audio_offset, AUDIO_SLOTS * qa)}
    samples = []
    for last, n in zip(last_tokens, text_lens):
        raw = ([1] + rng.integers(3, 60, size=n).tolist()
               + [ids[t] for t in ("<video_start>", "<video>", "<video_end>",
                                   "<audio_start>", "<audio>", "<audio_end>")]
               + [int(last)])
        samples.append(expand_placeholders(raw, [IGNORE_INDEX] * len(raw), blocks))
    batch = left_pad_batch(samples, SEQ, cfg.pad_token_id)
    batch.pop("pad_left")
    b, size = len(samples), cfg.clip.vision.image_size
    batch["frames"] = rng.normal(size=(b, FRAME_SLOTS, 3, size, size)).astype(np.float32)
    batch["fbank"] = rng.normal(size=(b, AUDIO_SLOTS, FBANK_FRAMES, 128)).astype(np.float32)
    batch["is_avss"] = np.zeros(b, bool)
    return batch


@pytest.fixture(scope="module")
def cfg():
    return tiny_crab_config()


@pytest.fixture(scope="module")
def base_model(cfg):
    model = Crab(cfg, rngs=nnx.Rngs(0))
    D.prepare_for_inference(model)
    return model


@pytest.fixture(scope="module")
def random_model(base_model):
    """Large random output head: the argmax depends strongly on the whole context."""
    model = nnx.clone(base_model)
    head = model.llm.lm_head.weight
    head[...] = jax.random.normal(jax.random.key(3), head.shape)
    return model


def chain_model(base_model, chain):
    """A copy whose greedy continuation of ``chain[i]`` is ``chain[i + 1]`` whatever the context.

    Chain token ``i`` gets embedding ``CHAIN_SCALE * u_i`` (``u_i`` a basis vector), so the
    final-norm hidden state after it is ~``sqrt(d) * u_i``; the head column of ``chain[i + 1]``
    is ``10 * u_i`` and every other column is zero.
    """
    model = nnx.clone(base_model)
    d = model.cfg.llama.hidden_size
    assert len(chain) <= d
    emb = np.asarray(model.llm.model.embed_tokens.weight[...]).copy()
    head = np.zeros(model.llm.lm_head.weight.shape, np.float32)
    for i, tok in enumerate(chain):
        emb[tok] = 0.0
        emb[tok, i] = CHAIN_SCALE
        if i + 1 < len(chain):
            head[i, chain[i + 1]] = 10.0
    model.llm.model.embed_tokens.weight[...] = jnp.asarray(emb)
    model.llm.lm_head.weight[...] = jnp.asarray(head)
    return model


@nnx.jit
def reference_forward(model, batch, generated):
    """No-cache, teacher-forced Crab over prompt + ``generated [b, N]``.

    Attention is causal, so the logits at slot ``P - 1 + j`` are exactly those a from-scratch
    recomputation after ``j`` generated tokens gives: one call checks every step. Returns
    logits and hidden states ``[b, P + N, ...]`` and the seg image features.
    """
    embeds, taps = D.encode_prompt(model, batch)
    n = generated.shape[1]
    embeds = jnp.concatenate([embeds, model.llm.model.embed_tokens(generated)], axis=1)
    mask = jnp.concatenate([batch["attention_mask"], jnp.ones(generated.shape, jnp.int32)], axis=1)
    last = batch["position_ids"][:, -1:]
    positions = jnp.concatenate([batch["position_ids"], last + 1 + jnp.arange(n)[None]], axis=1)
    logits, hidden = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                               return_hidden=True)
    return logits, hidden, model.seg_image_features(taps, jnp.ones(generated.shape[0], bool))


def test_cached_greedy_equals_uncached_argmax(cfg, random_model):
    batch = prompt_batch(cfg, last_tokens=[17, 40], text_lens=[3, 9], seed=0)
    assert batch["attention_mask"].sum(1).tolist() == [15, 21]  # two prompt lengths, left-padded
    gen = D.jit_generate(random_model, batch, DCFG)
    tokens, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    assert tokens.shape == (2, DCFG.max_new_tokens) and lengths.shape == (2,)
    assert len(set(tokens[:, :lengths.min()].ravel().tolist())) > 2, f"degenerate generation {tokens}"
    logits, _, _ = reference_forward(random_model, batch, gen.tokens)
    for j in range(int(lengths.max())):
        expected = np.asarray(jnp.argmax(logits[:, SEQ - 1 + j], axis=-1))
        live = j < lengths
        np.testing.assert_array_equal(tokens[live, j], expected[live], err_msg=f"step {j}")
    # Samples are independent: the same prompts in the other order give the same rows.
    swapped = D.jit_generate(random_model, {k: v[::-1] for k, v in batch.items()}, DCFG)
    np.testing.assert_array_equal(np.asarray(swapped.tokens)[::-1], tokens)


def test_stops_at_eos_and_pads_after(cfg, base_model):
    chain = [60, 61, 62, 63, EOS]  # sample 0 ends its prompt with 60: EOS at step 3
    model = chain_model(base_model, chain)
    batch = prompt_batch(cfg, last_tokens=[60, 62], text_lens=[5, 2], seed=1)
    gen = jax.device_get(D.jit_generate(model, batch, DCFG))
    np.testing.assert_array_equal(gen.tokens[0], [61, 62, 63, EOS] + [PAD] * 6)
    np.testing.assert_array_equal(gen.tokens[1], [63, EOS] + [PAD] * 8)
    np.testing.assert_array_equal(gen.lengths, [4, 2])
    np.testing.assert_array_equal(gen.finished, [True, True])
    # Nothing after EOS reaches a mask: a sample that ended emits no more flags.
    np.testing.assert_array_equal(gen.mask_count, [0, 0])


def test_one_compile_for_two_prompt_batches_of_one_shape(cfg, random_model):
    first = prompt_batch(cfg, last_tokens=[17, 40], text_lens=[3, 9], seed=0)
    second = prompt_batch(cfg, last_tokens=[5, 33], text_lens=[10, 1], seed=7)  # other lengths, same shape
    D.jit_generate(random_model, first, DCFG)
    key = (first["input_ids"].shape, DCFG.max_new_tokens)
    before = D.TRACES[key]
    assert before >= 1
    out = D.jit_generate(random_model, second, DCFG)
    jax.block_until_ready(out.tokens)
    assert D.TRACES[key] == before, "a second prompt batch of the same shape recompiled the generator"


def test_generated_mask_tokens_give_masks_from_the_right_hidden_states(cfg, base_model):
    ids = cfg.special_token_ids
    mask_ids = list(cfg.mask_token_ids)
    start = 60
    chain = [start, ids["<mask_start>"], *mask_ids, ids["<mask_end>"], EOS]
    model = chain_model(base_model, chain)
    # Sample 0 generates <mask_start> <mask_0..5> <mask_end> </s>; sample 1 starts mid-way
    # (prompt ends with <mask_2>) and generates only 3 mask tokens: no mask for it.
    batch = prompt_batch(cfg, last_tokens=[start, mask_ids[2]], text_lens=[4, 6], seed=2)
    gen = jax.device_get(D.jit_generate(model, batch, DCFG))
    np.testing.assert_array_equal(gen.tokens[0, :9], chain[1:])
    np.testing.assert_array_equal(gen.tokens[1, :6], [*mask_ids[3:], ids["<mask_end>"], EOS, PAD])
    np.testing.assert_array_equal(gen.mask_count, [6, 3])
    np.testing.assert_array_equal(gen.mask_valid, [True, False])
    # Mask token k is generated at step k + 1; its vector is step (k + 1)'s hidden state,
    # i.e. the state at the slot just before <mask_k> (the one that predicts it).
    np.testing.assert_array_equal(gen.mask_steps[0], np.arange(1, 7))
    np.testing.assert_array_equal(gen.mask_steps[1], [-1, -1, -1, 0, 1, 2])
    _, hidden, features = reference_forward(model, batch, jnp.asarray(gen.tokens))
    p = SEQ
    expected = np.asarray(hidden[0, p - 1 + 1: p - 1 + 7])  # slots of <mask_start>, <mask_0..4>
    np.testing.assert_allclose(gen.mask_embeddings[0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gen.mask_embeddings[1, 3:], np.asarray(hidden[1, p - 1: p + 2]), rtol=1e-4, atol=1e-4)
    # The seg module ran on exactly those vectors and the first frame's CLIP taps.
    size = cfg.seg.image_size
    assert gen.binary_logits.shape == (2, 1, size, size)
    assert gen.avss_logits.shape == (2, cfg.seg.avss_classes, size, size)
    assert gen.pred_masks.shape == (2, size, size)
    np.testing.assert_array_equal(gen.pred_masks, (gen.binary_logits[:, 0] > 0).astype(np.int32))
    direct = nnx.jit(lambda seg, e, f: seg(e, f, jnp.zeros(2, bool)))(model.seg_module, gen.mask_embeddings, features)
    np.testing.assert_allclose(gen.binary_logits, np.asarray(direct.binary_logits), rtol=1e-4, atol=1e-4)


def test_rolling_buffer_keeps_the_last_entries():
    buf = jnp.zeros((2, 3), jnp.int32)
    for step in range(5):
        buf = D._push(buf, jnp.full((2,), step, jnp.int32), jnp.array([True, step % 2 == 0]))
    np.testing.assert_array_equal(np.asarray(buf), [[2, 3, 4], [0, 2, 4]])


def test_sampling_respects_top_k_and_greedy_limit():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 512))
    keys = jax.random.key(0)
    top2 = np.asarray(D.select_tokens(logits, keys, D.DecodeConfig(max_new_tokens=1, temperature=1.0, top_k=2)))
    assert set(top2.tolist()) == {0, 1}
    nucleus = np.asarray(D.select_tokens(logits, keys, D.DecodeConfig(max_new_tokens=1, temperature=1.0, top_p=0.6)))
    assert set(nucleus.tolist()) == {0, 1}  # 0.5 < 0.6, so token 1 is still needed
    cold = np.asarray(D.select_tokens(logits, keys, D.DecodeConfig(max_new_tokens=1, temperature=1e-4)))
    assert set(cold.tolist()) == {0}
    with pytest.raises(ValueError, match="top_p"):
        D.DecodeConfig(max_new_tokens=1, top_p=0.0)


# ----------------------------------------------------------------------------- host side


def test_strip_answers_left_pads_the_prompt_and_keeps_the_answer():
    ids = np.array([[2, 2, 1, 7, 8, 9, 10, 2], [1, 5, 6, 9, 9, 9, 11, 2]], np.int32)
    labels = np.array([[-100, -100, -100, -100, -100, 9, 10, 2], [-100] * 8], np.int32)
    mask = (np.arange(8)[None] >= np.array([[2], [0]])).astype(np.int32)
    media = np.full((2, 8), -1, np.int32)
    media[0, 3] = 0
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "media_index": media,
             "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0)}
    out = I.strip_answers(batch, pad_id=2)
    np.testing.assert_array_equal(out.batch["input_ids"][0], [2, 2, 2, 2, 2, 1, 7, 8])
    np.testing.assert_array_equal(out.batch["media_index"][0], [-1] * 6 + [0, -1])
    np.testing.assert_array_equal(out.batch["attention_mask"][0], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(out.batch["position_ids"][0], [0, 0, 0, 0, 0, 0, 1, 2])
    np.testing.assert_array_equal(out.answers[0], [9, 10, 2])
    # A row without labels (a filler) keeps its whole sequence and is not scored.
    np.testing.assert_array_equal(out.batch["input_ids"][1], ids[1])
    np.testing.assert_array_equal(out.has_answer, [True, False])
    assert (out.batch["labels"] == IGNORE_INDEX).all()


def test_score_sample_parses_the_reference_answer():
    def one(task, text, ref, **kw):
        return I.score_sample(task, text=text, reference_text=ref, generated=np.array([1, 2]),
                              reference=np.array([1, 2]), eos_id=2, **kw)

    assert one("avqa", "So the answer is <answer> two </answer>.</s>",
               "So the answer is <answer> Two </answer>.</s>") == {"exact_match": 1.0, "avqa": 1.0}
    ave_ref = "is <event> dog </event>, and the time range is <range> 2,8 </range>.</s>"
    assert one("ave", "is <event> dog </event>, and the time range is <range> 2,6 </range>.", ave_ref)["ave"] == 0.8
    gt = np.zeros((4, 4), np.int32)
    gt[:2] = 1
    s4 = one("s4", "The object making the sound in the video is cat. The mask ... is <mask_start>",
             "The object making the sound in the video is cat. The mask ... is <mask_start>",
             pred_mask=gt, mask_valid=True, gt_mask=gt)
    assert s4["s4"] == pytest.approx(1.0) and s4["s4_category"] == 1.0
    no_mask = one("s4", "", "The object making the sound in the video is cat.", pred_mask=gt, mask_valid=False,
                  gt_mask=gt)
    assert no_mask["s4"] == 0.0 and no_mask["s4_category"] == 0.0
    # Without a tokenizer only the id-level metric exists.
    assert I.score_sample("avqa", text="", reference_text="", generated=np.array([3, 2]), reference=np.array([4, 2]),
                          eos_id=2, tokenizer_available=False) == {"exact_match": 0.0}


class _CharTokenizer:
    """Ids 3.. are characters; 2 is ``</s>``."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("</s>" if i == 2 else chr(i + 94) for i in ids)


def test_evaluate_scores_a_memorised_answer(cfg, base_model):
    # The chain model answers 61 62 63 </s> after token 60; the reference answer of sample 0
    # is exactly that, sample 1's is not.
    model = chain_model(base_model, [60, 61, 62, 63, EOS])
    prompts = prompt_batch(cfg, last_tokens=[60, 60], text_lens=[3, 5], seed=4)
    answers = [[61, 62, 63, EOS], [61, 62, 9, EOS]]
    rows = []
    for i, ans in enumerate(answers):
        real = prompts["input_ids"][i][prompts["attention_mask"][i] == 1]
        rows.append(expand_placeholders(np.concatenate([real, ans]), [IGNORE_INDEX] * len(real) + ans, {}))
    batch = left_pad_batch(rows, SEQ, cfg.pad_token_id)
    batch.pop("pad_left")
    media = np.full_like(batch["input_ids"], -1)
    for i in range(2):
        src = prompts["media_index"][i][prompts["attention_mask"][i] == 1]
        start = int(np.flatnonzero(batch["attention_mask"][i])[0])
        media[i, start:start + len(src)] = src
    batch.update(media_index=media, frames=prompts["frames"], fbank=prompts["fbank"],
                 task_id=np.array([0, 0], np.int32), is_avss=np.zeros(2, bool))
    samples = []
    results = I.evaluate(model, [batch], _CharTokenizer(), ("ave",), dcfg=DCFG, with_chance=False,
                         records_out=samples)
    assert results["ave/exact_match"] == {"mean": 0.5, "n": 2}
    assert [s["finished"] for s in samples] == [True, True]
    assert I.flat_metrics(results) == {"eval/ave/exact_match": 0.5}


def test_config_overrides_take_the_trainer_spelling_too():
    from crab_jax.cli.infer import parse_args
    from crab_jax.config.loader import load_config

    args = parse_args(["--config", "configs/tiny.py", "--workdir", "w", "--set", "data.seq_len=64",
                       "--config.eval.batch_size=8", "--config.data.source=random"])
    assert args.set == ["data.seq_len=64", "eval.batch_size=8", "data.source=random"]
    config = load_config(args.config, args.set)
    assert (config.data.seq_len, config.eval.batch_size, config.data.source) == (64, 8, "random")
    with pytest.raises(SystemExit):
        parse_args(["--config", "configs/tiny.py", "--workdir", "w", "--bogus=1"])
