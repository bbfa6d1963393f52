"""BERT Q-Former projectors: Crab's ``VLProjector`` (video/image) and ``ALProjector`` (audio).

A projector turns encoder tokens into LLM tokens (Crab ``models/multimodal_encoder.py`` with
``models/Qformer.py``)::

    x  [b*t, n, W] --LayerNorm(W)--> cross-attention keys/values
    queries [1, Q, H] --BERT embedding LayerNorm--> L x (self-attn, cross-attn, query FFN) --> [b*t, Q, H]
    --MLP (Linear H->D, GELU, Linear D->D, ...)--> [b, t*Q, D]

Only the query path of the BERT Q-Former runs: there are no text tokens, so the word and
position embeddings, the text feed-forward (``intermediate`` / ``output``) and the masked-LM
head ``cls.predictions`` are kept as parameters only so that checkpoints round-trip. The
head's decoder is tied in torch (weight = word embeddings, bias = ``cls.predictions.bias``),
so it owns no parameter here. Every attention mask of the original is all ones, so none is
built, except the cross-attention's optional key mask (``encoder_mask``: padded audio
patches of a task-mixed batch, which the unpadded computation never sees).

BERT's dropouts run as in the original in training mode: ``hidden_dropout_prob`` after the
embedding LayerNorm and after every attention-output / FFN-output dense (before the residual
LayerNorm), ``attention_probs_dropout_prob`` on the attention probabilities. A freshly built
projector is in inference mode (deterministic); ``model.train()`` switches them on and
``model.eval()`` off, like every ``nnx.Dropout`` of the model. Module attribute names mirror the torch state-dict names (``attention.self.query``,
``crossattention.output.LayerNorm``, ``visual_proj.0`` ...), so the converter table is a
near-identity map.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.models.attention import multi_head_attention
from crab_jax.models.layers import Embed, LayerNorm, Linear, activation, normal_init, zeros_init
from crab_jax.parallel.sharding import buffer, param

# HF ``ACT2FN`` names that crab_jax's activation table spells differently.
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "swish": "silu"}


def hf_activation(name: str):
    return activation(_HF_ACTIVATIONS.get(name, name))


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    """A Q-Former projector: the BERT config plus the projector's overrides.

    Attributes:
      hidden_size: H, the BERT width (queries and Q-Former outputs).
      encoder_width: W, the width of the encoder tokens (cross-attention key/value input).
      num_query_tokens: Q, learned queries per image / audio segment.
      d_model: D, the LLM width the MLP projects to.
      mlp_depth: number of Linear layers of the projection MLP (GELU between them).
      tokens_per_frame: encoder tokens per frame of the visual input (Crab: 256 CLIP patches).
      cross_attention_freq: layer ``i`` has cross-attention iff ``i % freq == 0`` (Crab: 1).
    """

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    num_hidden_layers: int = 2
    cross_attention_freq: int = 1
    encoder_width: int = 1024
    num_query_tokens: int = 32
    d_model: int = 4096
    mlp_depth: int = 2
    tokens_per_frame: int = 256
    input_ln_eps: float = 1e-5  # the projector's own nn.LayerNorm (torch default eps)
    hidden_dropout_prob: float = 0.1           # BERT's defaults (training mode only)
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.mlp_depth < 1 or self.cross_attention_freq < 1:
            raise ValueError("mlp_depth and cross_attention_freq must be >= 1")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"QFormerConfig.{name}={getattr(self, name)}: expected a probability in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def has_cross_attention(self, layer: int) -> bool:
        return layer % self.cross_attention_freq == 0

    @classmethod
    def from_bert_config(
        cls,
        bert: Mapping[str, Any],
        *,
        num_hidden_layers: int,
        encoder_width: int,
        num_query_tokens: int,
        d_model: int,
        mlp_depth: int = 2,
        tokens_per_frame: int = 256,
        cross_attention_freq: int = 1,
    ) -> "QFormerConfig":
        """From a HF ``BertConfig`` dict (``config.json``) and the projector's overrides.

        As in Crab, the projector replaces the BERT layer count and adds cross-attention;
        everything else (widths, heads, eps, activation, vocabulary, dropouts) comes from ``bert``.
        """
        kind = bert.get("position_embedding_type", "absolute")
        if kind != "absolute":  # relative kinds add distance tables the Q-Former path never uses
            raise ValueError(f"position_embedding_type {kind!r} is not supported (only 'absolute')")
        return cls(
            hidden_size=int(bert["hidden_size"]),
            num_attention_heads=int(bert["num_attention_heads"]),
            intermediate_size=int(bert["intermediate_size"]),
            vocab_size=int(bert["vocab_size"]),
            max_position_embeddings=int(bert["max_position_embeddings"]),
            layer_norm_eps=float(bert.get("layer_norm_eps", 1e-12)),
            hidden_act=str(bert.get("hidden_act", "gelu")),
            hidden_dropout_prob=float(bert.get("hidden_dropout_prob", 0.1)),
            attention_probs_dropout_prob=float(bert.get("attention_probs_dropout_prob", 0.1)),
            num_hidden_layers=int(num_hidden_layers),
            cross_attention_freq=int(cross_attention_freq),
            encoder_width=int(encoder_width),
            num_query_tokens=int(num_query_tokens),
            d_model=int(d_model),
            mlp_depth=int(mlp_depth),
            tokens_per_frame=int(tokens_per_frame),
        )

    @classmethod
    def from_bert_config_file(cls, path: str | os.PathLike, **overrides) -> "QFormerConfig":
        """``path``: a BERT ``config.json`` or the directory holding it."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            return cls.from_bert_config(json.load(f), **overrides)


# -- BERT pieces (torch names) ------------------------------------------------------------


def bert_dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """A BERT dropout, built switched off (``model.train()`` turns it on); None for rate 0 (no
    module, and no draw from ``rngs``: a dropout-free config initialises as before)."""
    return nnx.Dropout(rate, deterministic=True, rngs=rngs) if rate > 0 else None


def _dropped(dropout: nnx.Dropout | None, x: jax.Array) -> jax.Array:
    return x if dropout is None else dropout(x)


class BertEmbeddings(nnx.Module):
    """Word / position tables (unused by the query path), the embedding LayerNorm and the
    ``position_ids`` buffer [1, max_positions]."""

    def __init__(self, cfg: QFormerConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.word_embeddings = Embed(cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"),
                                     param_dtype=param_dtype, rngs=rngs)
        self.position_embeddings = Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                         axes=("positions", "embed"), param_dtype=param_dtype, rngs=rngs)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.dropout = bert_dropout(cfg.hidden_dropout_prob, rngs)
        # int32: JAX runs without x64; the converter writes it back as torch's int64.
        self.position_ids = buffer(jnp.arange(cfg.max_position_embeddings, dtype=jnp.int32)[None],
                                   (None, "positions"))

    def __call__(self, query_embeds: jax.Array) -> jax.Array:
        """Queries only (no text ids): ``[batch, Q, H] -> [batch, Q, H]``, LayerNorm (+ dropout)."""
        return _dropped(self.dropout, self.LayerNorm(query_embeds))


class BertSelfAttention(nnx.Module):
    """``query`` / ``key`` / ``value`` projections; keys and values come from ``kv_width`` inputs."""

    def __init__(self, cfg: QFormerConfig, kv_width: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.num_heads = cfg.num_attention_heads
        h = cfg.hidden_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = Linear(h, h, axes=("embed", "heads"), **kw)
        self.key = Linear(kv_width, h, axes=("embed", "kv"), **kw)
        self.value = Linear(kv_width, h, axes=("embed", "kv"), **kw)
        self.dropout = bert_dropout(cfg.attention_probs_dropout_prob, rngs)

    def __call__(self, hidden: jax.Array, context: jax.Array, context_mask: jax.Array | None = None) -> jax.Array:
        """``hidden [batch, q_len, H]``, ``context [batch, kv_len, kv_width]`` -> ``[batch, q_len, H]``.

        ``context_mask [batch, kv_len]`` bool: keys that may be attended (None: all; the
        original's masks are all ones).
        """
        mask = None if context_mask is None else context_mask[:, None, None, :]
        return multi_head_attention(self.query(hidden), self.key(context), self.value(context), self.num_heads,
                                    mask=mask, probs_dropout=self.dropout)


class BertSelfOutput(nnx.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``."""

    def __init__(self, cfg: QFormerConfig, in_features: int, in_axis: str, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dense = Linear(in_features, cfg.hidden_size, axes=(in_axis, "embed"), dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.dropout = bert_dropout(cfg.hidden_dropout_prob, rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(_dropped(self.dropout, self.dense(x)) + residual)


class BertAttention(nnx.Module):
    """``self`` (the torch name of the q/k/v block) + ``output``."""

    def __init__(self, cfg: QFormerConfig, kv_width: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self = BertSelfAttention(cfg, kv_width, **kw)
        self.output = BertSelfOutput(cfg, cfg.hidden_size, "heads", **kw)

    def __call__(self, hidden: jax.Array, context: jax.Array | None = None,
                 context_mask: jax.Array | None = None) -> jax.Array:
        """Self-attention if ``context`` is None, else cross-attention to it (keys where
        ``context_mask [batch, kv_len]``, default all); ``[batch, q_len, H]``."""
        return self.output(self.self(hidden, hidden if context is None else context, context_mask), hidden)


class BertIntermediate(nnx.Module):
    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dense = Linear(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
        self.act = hf_activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., H] -> [..., I]``."""
        return self.act(self.dense(x))


class BertLayer(nnx.Module):
    """Self-attention, cross-attention (every ``cross_attention_freq``-th layer), query FFN.

    ``intermediate`` / ``output`` (the text FFN) are never called: there are no text tokens.
    """

    def __init__(self, cfg: QFormerConfig, layer: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention = BertAttention(cfg, cfg.hidden_size, **kw)
        self.crossattention = BertAttention(cfg, cfg.encoder_width, **kw) if cfg.has_cross_attention(layer) else None
        self.intermediate = BertIntermediate(cfg, **kw)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size, "mlp", **kw)
        self.intermediate_query = BertIntermediate(cfg, **kw)
        self.output_query = BertSelfOutput(cfg, cfg.intermediate_size, "mlp", **kw)

    def __call__(self, queries: jax.Array, encoder_states: jax.Array,
                 encoder_mask: jax.Array | None = None) -> jax.Array:
        """``queries [batch, Q, H]``, ``encoder_states [batch, n, W]`` (attended where
        ``encoder_mask [batch, n]``, default all) -> ``[batch, Q, H]``."""
        h = self.attention(queries)
        if self.crossattention is not None:
            h = self.crossattention(h, encoder_states, encoder_mask)
        return self.output_query(self.intermediate_query(h), h)


class BertEncoder(nnx.Module):
    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(cfg, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                               for i in range(cfg.num_hidden_layers)])

    def __call__(self, queries: jax.Array, encoder_states: jax.Array,
                 encoder_mask: jax.Array | None = None) -> jax.Array:
        for layer in self.layer:  # few layers, each with its own (optional) cross-attention
            queries = layer(queries, encoder_states, encoder_mask)
        return queries


class BertModel(nnx.Module):
    """``embeddings`` + ``encoder`` (no pooler, as in the Q-Former's ``BertLMHeadModel``)."""

    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.embeddings = BertEmbeddings(cfg, param_dtype=param_dtype, rngs=rngs)
        self.encoder = BertEncoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, query_embeds: jax.Array, encoder_states: jax.Array,
                 encoder_mask: jax.Array | None = None) -> jax.Array:
        """``query_embeds [batch, Q, H]``, ``encoder_states [batch, n, W]`` (``encoder_mask [batch, n]``)
        -> last hidden ``[batch, Q, H]``."""
        return self.encoder(self.embeddings(query_embeds), encoder_states, encoder_mask)


class BertPredictionHeadTransform(nnx.Module):
    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, axes=("embed", "mlp"), dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
        self.act = hf_activation(cfg.hidden_act)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nnx.Module):
    """Masked-LM head. ``decoder`` is tied in torch: its weight is the word embedding table and
    its bias is ``bias``, so it owns no parameter here."""

    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.transform = BertPredictionHeadTransform(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bias = param(zeros_init, rngs.params(), (cfg.vocab_size,), ("vocab",), param_dtype)

    def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        """``[..., H]`` -> logits ``[..., vocab]`` (unused by Crab; kept for completeness)."""
        h = self.transform(hidden)
        return jnp.dot(h, word_embeddings.T.astype(h.dtype)) + self.bias[...].astype(h.dtype)


class BertOnlyMLMHead(nnx.Module):
    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.predictions = BertLMPredictionHead(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class QFormer(nnx.Module):
    """The Q-Former (torch ``BertLMHeadModel``): ``bert`` + the unused masked-LM head ``cls``."""

    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cls = BertOnlyMLMHead(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, query_embeds: jax.Array, encoder_states: jax.Array,
                 encoder_mask: jax.Array | None = None) -> jax.Array:
        """``[batch, Q, H]``, ``[batch, n, W]`` (``encoder_mask [batch, n]``) -> ``[batch, Q, H]``."""
        return self.bert(query_embeds, encoder_states, encoder_mask)


# -- projectors -----------------------------------------------------------------------------


class _Activation(nnx.Module):
    """Parameter-free slot of the torch ``nn.Sequential`` (keeps the Linear indices 0, 2, 4 ...)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


def projection_mlp(cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.List:
    """Crab's ``build_mlp``: ``Linear(H, D)`` then ``(GELU, Linear(D, D)) * (depth - 1)``."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    layers = [Linear(cfg.hidden_size, cfg.d_model, axes=("mlp", "embed"), **kw)]
    for _ in range(1, cfg.mlp_depth):
        layers.append(_Activation(activation("gelu")))  # torch nn.GELU(): exact
        layers.append(Linear(cfg.d_model, cfg.d_model, axes=("mlp", "embed"), **kw))
    return nnx.List(layers)


def _projector_parts(cfg: QFormerConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    """``(input LayerNorm, Q-Former, query tokens [1, Q, H], MLP)`` of one projector."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    ln = LayerNorm(cfg.encoder_width, eps=cfg.input_ln_eps, param_dtype=param_dtype, rngs=rngs)
    query_tokens = param(normal_init(0.02), rngs.params(), (1, cfg.num_query_tokens, cfg.hidden_size),
                         (None, "queries", "embed"), param_dtype)
    return ln, QFormer(cfg, **kw), query_tokens, projection_mlp(cfg, **kw)


class _Projector(nnx.Module):
    """Shared body of both projectors; subclasses own the torch-named attributes."""

    cfg: QFormerConfig

    def _parts(self) -> tuple[LayerNorm, QFormer, nnx.Param, nnx.List]:
        raise NotImplementedError

    def query_features(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """LayerNorm + Q-Former: ``[batch, n, W] -> [batch, Q, H]`` (before the MLP); the queries
        attend only the tokens where ``mask [batch, n]`` (default all)."""
        ln, qformer, query_tokens, _ = self._parts()
        x = ln(x)
        queries = query_tokens[...].astype(x.dtype)
        queries = jnp.broadcast_to(queries, (x.shape[0],) + queries.shape[1:])
        return qformer(queries, x, mask)

    def project(self, h: jax.Array) -> jax.Array:
        """The MLP: ``[..., H] -> [..., d_model]``."""
        x = h
        for layer in self._parts()[3]:
            x = layer(x)
        return x


class VisualProjector(_Projector):
    """Crab ``VLProjector``: ``visual_ln``, ``visual_Qformer``, ``visual_query_tokens``, ``visual_proj``."""

    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        (self.visual_ln, self.visual_Qformer, self.visual_query_tokens,
         self.visual_proj) = _projector_parts(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def _parts(self):
        return self.visual_ln, self.visual_Qformer, self.visual_query_tokens, self.visual_proj

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[batch, t*tokens_per_frame, W] -> [batch, t*Q, d_model]``, frame after frame."""
        b, tn, w = x.shape
        n = self.cfg.tokens_per_frame
        if tn % n:
            raise ValueError(f"visual input has {tn} tokens, not a multiple of tokens_per_frame {n}")
        t = tn // n
        h = self.query_features(x.reshape(b * t, n, w))  # [b*t, Q, H]
        return self.project(h).reshape(b, t * self.cfg.num_query_tokens, -1)


class AudioProjector(_Projector):
    """Crab ``ALProjector``: ``audio_ln``, ``audio_Qformer``, ``audio_query_tokens``, ``audio_proj``."""

    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        (self.audio_ln, self.audio_Qformer, self.audio_query_tokens,
         self.audio_proj) = _projector_parts(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def _parts(self):
        return self.audio_ln, self.audio_Qformer, self.audio_query_tokens, self.audio_proj

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``[batch, n, W] -> [batch, Q, d_model]``; ``[batch, t, n, W] -> [batch, t*Q, d_model]``
        (each segment through the Q-Former separately, concatenated over time, then the MLP).

        ``mask`` (``[batch, n]`` / ``[batch, t, n]`` bool, default all True): the tokens of each
        segment that are real (padded audio patches are False and never attended).
        """
        if x.ndim == 3:
            return self.project(self.query_features(x, mask))
        if x.ndim != 4:
            raise ValueError(f"audio input must be [b, n, W] or [b, t, n, W], got shape {x.shape}")
        b, t, n, w = x.shape
        flat_mask = None if mask is None else mask.reshape(b * t, n)
        h = self.query_features(x.reshape(b * t, n, w), flat_mask)  # [b*t, Q, H]
        return self.project(h.reshape(b, t * self.cfg.num_query_tokens, -1))
