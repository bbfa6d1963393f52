"""The Q-Formers' BERT dropouts (issue 11): on in training mode as in the original, off in eval
mode (eval parity with the original is tests/models/test_qformer.py)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crab_jax.models.qformer import AudioProjector, BertEmbeddings, QFormerConfig


def _config(**bert_changes) -> QFormerConfig:
    bert = dict(dict(hidden_size=16, num_attention_heads=2, intermediate_size=24, vocab_size=10,
                     max_position_embeddings=8, layer_norm_eps=1e-12, hidden_act="gelu"), **bert_changes)
    return QFormerConfig.from_bert_config(bert, num_hidden_layers=2, encoder_width=12, num_query_tokens=3,
                                          d_model=20, mlp_depth=2, tokens_per_frame=5)


def _run(module, x):
    graphdef, state = nnx.split(module)
    out, state = jax.jit(lambda s, x: (lambda m: (m(x), nnx.state(m)))(nnx.merge(graphdef, s)))(state, x)
    nnx.update(module, state)
    return np.asarray(out)


def test_rates_come_from_the_bert_config(fixtures_dir):
    with open(fixtures_dir / "crab_full" / "bert_config" / "config.json") as f:
        bert = json.load(f)
    cfg = QFormerConfig.from_bert_config(bert, num_hidden_layers=1, encoder_width=8, num_query_tokens=2, d_model=4)
    assert cfg.hidden_dropout_prob == bert["hidden_dropout_prob"]
    assert cfg.attention_probs_dropout_prob == bert["attention_probs_dropout_prob"]
    cfg = _config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2)
    module = AudioProjector(cfg, rngs=nnx.Rngs(0))
    bert_model = module.audio_Qformer.bert
    layer = bert_model.encoder.layer[0]
    assert bert_model.embeddings.dropout.rate == 0.3
    assert layer.attention.self.dropout.rate == 0.2 and layer.crossattention.self.dropout.rate == 0.2
    assert layer.attention.output.dropout.rate == 0.3 and layer.output_query.dropout.rate == 0.3


def test_train_mode_drops_eval_mode_is_deterministic():
    cfg = _config()
    x = jax.random.normal(jax.random.key(1), (4, 7, cfg.encoder_width))
    a = AudioProjector(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    b = AudioProjector(cfg, rngs=nnx.Rngs(params=0, dropout=2))
    fresh = _run(a, x)  # built in inference mode
    np.testing.assert_array_equal(fresh, _run(b, x))
    a.train()
    b.train()
    ya, yb = _run(a, x), _run(b, x)
    assert np.abs(ya - yb).max() > 1e-3, "two dropout seeds gave the same training output"
    assert np.abs(ya - _run(a, x)).max() > 1e-3, "the dropout stream did not advance between calls"
    a.eval()
    np.testing.assert_array_equal(_run(a, x), fresh)


def test_dropout_zeroes_the_rate_and_rescales_the_rest():
    cfg = _config(hidden_size=64, num_attention_heads=4, hidden_dropout_prob=0.25)
    emb = BertEmbeddings(cfg, rngs=nnx.Rngs(params=0, dropout=3))
    q = jax.random.normal(jax.random.key(2), (128, 32, cfg.hidden_size))
    clean = np.asarray(emb(q))
    emb.train()
    dropped = np.asarray(emb(q))
    zeros = dropped == 0
    assert abs(zeros.mean() - 0.25) < 0.01, zeros.mean()
    np.testing.assert_allclose(dropped[~zeros], clean[~zeros] / 0.75, rtol=1e-5, atol=1e-6)


def test_attention_probabilities_are_dropped():
    from crab_jax.models.attention import multi_head_attention

    q = jnp.zeros((1, 4, 8))
    k = jnp.zeros((1, 50, 8))
    v = jnp.ones((1, 50, 8))  # uniform probabilities 1/50 -> each output is the kept mass / (1 - p)
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    out = np.asarray(multi_head_attention(q, k, v, 2, probs_dropout=drop))
    # Each output is (kept keys / 50) / (1 - 0.5): a multiple of 1/25, not the dense 1.0 everywhere.
    np.testing.assert_allclose(out * 25, np.round(out * 25), atol=1e-4)
    assert out.std() > 0.05 and abs(out.mean() - 1.0) < 0.2
    np.testing.assert_allclose(np.asarray(multi_head_attention(q, k, v, 2)), 1.0, rtol=1e-6)
