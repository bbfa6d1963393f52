"""The model-family seam: what shared code (training, evaluation, AOT, checkpoints, converters)
may ask of a family, and nothing else.

A family (``crab_jax/families/<name>/``) builds one :class:`Family` in its ``family.py``;
:func:`crab_jax.families.get` returns it for the config's ``model.family``. Shared code
holds the family's model config (``model_cfg``, e.g. a ``CrabConfig``) and model objects
opaquely: it only passes them back to these hooks, or reads the attributes named here.

Batches are dicts of numpy / jax arrays with static shapes; which keys they hold is the
family's business (its :class:`BatchFormat`), except three that shared code reads:
``labels [b, S]`` (for the per-task token counts), ``attention_mask [b, S]`` (real tokens,
router usage, throughput) and ``task_id [b]`` (per-task metrics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol

import jax

from crab_jax.checkpoints.convert.family_converter import FamilyConverter
from crab_jax.config.sections import DataConfig, ModelConfig
from crab_jax.metrics.tables import ScoringContext, TaskScorer


class LossOutput(NamedTuple):
    """What one training forward pass returns to the train step.

    loss: scalar, what is differentiated.
    logits: ``[b, S, V]`` (per-sample / per-task LM losses are computed from them).
    terms: scalar parts of ``loss`` to log (``{"lm_loss": .., "mask_loss": ..}``).
    per_sample: ``{name: [b]}`` per-sample values summed per task (e.g. ``mask_loss``).
    lm_sums: ``(nll [b], tokens [b])``, each sample's summed next-token NLL and predicted tokens
      (``crab_jax.models.losses.per_sample_lm_sums`` of ``logits``, computed once by the model).
    """

    loss: jax.Array
    logits: jax.Array
    terms: Mapping[str, jax.Array]
    per_sample: Mapping[str, jax.Array]
    lm_sums: tuple[jax.Array, jax.Array]


class BatchSpec(Protocol):
    """Static shapes of one batch (a family's own frozen dataclass; these attributes are read)."""

    batch: int
    seq_len: int


@dataclasses.dataclass(frozen=True)
class BatchFormat:
    """A family's batch contract.

    spec: ``(data, model_cfg, batch_size) -> BatchSpec`` of the ``random`` source (one shape).
    shapes: ``(spec, model_cfg) -> {key: (shape, dtype)}`` of every array of such a batch.
    random_batches: ``(spec, model_cfg, seed, *, num_distinct, tasks) -> iterator`` of well-formed
      random batches (with ``get_state`` / ``set_state``).
    check: ``(batch, spec, model_cfg, source)``: raises naming the first key whose shape differs.
    prompt_batch: ``(batch, model_cfg, *, padding="left") -> (prompt batch, answers [list of id
      arrays], has_answer [b])``: a training-format batch cut to its prompts (same shapes) for
      generation, the prompts padded on ``padding``'s side (``"right"``: only a family whose
      original right-pads its generation batches accepts it, to reproduce its numbers).
    packed_spec: ``(data, model_cfg, batch_size) -> BatchSpec`` of the packed bucket as the config
      sizes it (``data.packing``; its media slots: ``data.packing.frame_slots`` / ``audio_slots``, or
      the most at ``samples`` samples per row when 0), for compiling without data (the AOT check);
      None: the family cannot pack (its builder has no ``collate_packed``).
    """

    spec: Callable[[DataConfig, Any, int], BatchSpec]
    shapes: Callable[[BatchSpec, Any], dict]
    random_batches: Callable[..., Iterator[dict]]
    check: Callable[..., None]
    prompt_batch: Callable[..., Any]
    packed_spec: Callable[[DataConfig, Any, int], BatchSpec] | None = None


@dataclasses.dataclass(frozen=True)
class RouterTower:
    """A stack of I-LoRA layers whose router usage the train step logs (per task, layer group, head).

    name: the tower's word in the metric names, ``router/<task>/<name>/group<g>/head<h>``
      (``"vision"``, ``"audio"``); ``""`` is the LLM's ``router/<task>/group<g>/head<h>``.
    path: first element of the module path of the tower's I-LoRA layers (``"visual"``); ``""``:
      every I-LoRA layer.
    num_layers: ``model_cfg -> int``, the tower's layers (usage per contiguous group of them).
    row_valid: ``(batch, model_cfg) -> [b, n]`` (bool or 0/1) which of each sample's ``n`` gate
      rows are real (not a padding token, padded patch, empty slot, ...). One layer's gates,
      whatever the tower's batch layout (``[b*V, h*w, k]``, ``[b*C, W, k]``, ``[b, S, k]``; a
      scanned stack adds a leading ``[L]``), are read row-major as ``[b, n, k]``: row ``j`` of
      sample ``i`` is the ``j``-th of its rows in that layout.
    """

    name: str
    path: str
    num_layers: Callable[[Any], int]
    row_valid: Callable[[Mapping[str, Any], Any], Any]


# ----------------------------------------------------------------------------- quick-start predictions


@dataclasses.dataclass(frozen=True)
class SamplePrediction:
    """One generated sample as a predictions line holds it (``python -m crab_jax.infer --weights``).

    text: the decoded answer, exactly as the family's original writes it.
    generated_ids: ``[n]`` int32 generated ids (EOS included when emitted).
    finished: EOS was emitted within the token budget.
    mask_tokens: mask tokens generated (the family's rule says how many a mask needs).
    mask_logits: ``[H, W]`` float32 logits of a binary mask, or None (no binary mask).
    mask_classes: ``[H, W]`` int32 class ids of a multi-class mask, or None.
    """

    text: str
    generated_ids: Any
    finished: bool
    mask_tokens: int
    mask_logits: Any = None
    mask_classes: Any = None


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything family-specific that shared code uses (see the module docstring).

    Model:
      model_config: ``(model section, base_vocab or None) -> model_cfg`` (presets, run options,
        ``model.preset='checkpoint'`` reads the config file next to ``init_checkpoint``;
        ``base_vocab``: the tokenizer's text ids, None keeps the preset's).
      build_model: ``(model_cfg, nnx.Rngs) -> nnx.Module`` in training mode.
      forward_loss: ``(model, batch, with_seg) -> LossOutput``.
      num_llm_layers: ``model_cfg -> int`` (router usage per group of decoder layers).
      llm_path: module path of the LLM (``"llm"``, ``"model"``): the train step's router usage
        is taken over the I-LoRA gates under it, whose tokens are the batch's ``[b, S]``
        (encoder towers' gates are per patch / frame). ``""``: every I-LoRA layer.
      token_modality: ``(batch, model_cfg) -> [b, S]`` int numpy array, what each slot of the
        LLM's sequence holds, as the family places media rows: ``TEXT`` (0, a text token),
        ``VISUAL`` (1, a vision encoder row spliced in) or ``AUDIO`` (2, an audio row)
        (:mod:`crab_jax.models.media`; the router analysis per modality,
        :mod:`crab_jax.evaluation.routes`). None: every slot is text.
      router_towers: the :class:`RouterTower` s with I-LoRA besides the LLM (Crab+: vision,
        audio), logged next to it (:func:`all_router_towers`); they need a non-empty ``llm_path``.
      vocab_sizes: ``model_cfg -> (vocab_size, padded_vocab_size)`` of the LLM's embeddings /
        head (converted checkpoints are zero-padded between the two).
      unused_modules: ``(model section, data section) -> module paths`` (``"seg_module"``) a run
        never uses (its branches and tasks say so): a converted checkpoint may lack them, their
        frozen weights then keep the seed's values. None: every module is used.
      flops: ``(model_cfg, batch spec, trainable_paths, *, remat) -> flops`` with ``per_token`` (training
        model FLOPs per token, the MFU numerator), ``recompute_per_token`` (remat's extra forward) and
        ``scan_uncounted_per_token`` (what scanned layer stacks run beyond their first iteration:
        XLA counts a loop body once, the AOT check adds it back).
    Data:
      load_tokenizer: ``folder -> tokenizer`` with the family's added tokens.
      base_vocab_of: ``tokenizer -> int`` text ids before the added tokens.
      added_tokens: the family's added token strings, in vocabulary order.
      record_texts: ``(record, answer) -> (instruction, target)`` texts a record trains on (a
        word tokenizer for the synthetic data is built from them).
      batch: :class:`BatchFormat`.
      read_records: ``(root, tasks, split, seed) -> (records, bad-record errors)``.
      example_builder: ``(model_cfg, data, root, tokenizer) -> builder`` for the data pipeline
        (:mod:`crab_jax.data.pipeline`).
    Evaluation:
      pad_token_id: ``model_cfg -> int`` written after EOS.
      generate: ``(model, prompt batch, DecodeConfig, rng) -> generation`` (jit-compiled).
      score_batch: ``(generation, prompt, batch, tokenizer, tasks, dcfg) -> list of per-sample
        dicts {task, scores, ...}``.
      headline: task -> metric names, the first one present is a run summary's number for the task.
    Prediction files (``python -m crab_jax.infer`` writes them, ``python -m crab_jax.evaluate`` scores them):
      prediction_metadata: ``record -> dict``: the record half of one predictions line (the
        command adds the prediction).
      task_scorers: task -> ``(ctx: ScoringContext) -> TaskScorer`` for every task it can score.
    Quick start (``python -m crab_jax.infer --weights DIR``, :mod:`crab_jax.evaluation.quick_start`):
      read_quick_start: ``requests file -> ReadResult`` of the family's requests on a user's own
        clips (``infer --input``; paths relative to ``--media-root``); None: ``--data-root`` only.
      checkpoint_config: ``converted checkpoint dir -> model_cfg`` as stored next to its params.
      default_max_new_tokens: ``task -> int``, the original's generation budget of the task.
      predictions: ``(generation, records, tokenizer) -> list of SamplePrediction`` (one per
        record, the generation's first rows) as the original decodes and masks them.
    SAM2 second stage (``python -m crab_jax.segment``, :mod:`crab_jax.evaluation.sam2_stage`):
      mask_prompts: ``(task, predicted text) -> prompt or None`` (None: the task has no mask):
        the family's parse of an answer into a SAM2 prompt, an object with ``valid`` (bool),
        ``reason`` (str or None), ``negative`` (bool: an all-zero mask, SAM2 not run), ``box``
        (``(x1, y1, x2, y2)`` or None) and ``points`` (``((x, y), ...)``, labels 1), in the
        pixels of the 224x224 frame SAM2 segments.
    Conversion:
      converter: the family's torch <-> JAX converter (:class:`~crab_jax.checkpoints.convert.family_converter.FamilyConverter`).
    """

    name: str
    model_config: Callable[[ModelConfig, int | None], Any]
    build_model: Callable[..., Any]
    forward_loss: Callable[..., LossOutput]
    num_llm_layers: Callable[[Any], int]
    vocab_sizes: Callable[[Any], tuple[int, int]]
    flops: Callable[..., Any]
    load_tokenizer: Callable[[str], Any]
    base_vocab_of: Callable[[Any], int]
    added_tokens: tuple[str, ...]
    record_texts: Callable[[Any, str | None], tuple[str, str | None]]
    batch: BatchFormat
    read_records: Callable[..., tuple[list, list]]
    example_builder: Callable[..., Any]
    pad_token_id: Callable[[Any], int]
    generate: Callable[..., Any]
    score_batch: Callable[..., list[dict]]
    headline: Mapping[str, tuple[str, ...]]
    converter: FamilyConverter | None = None
    prediction_metadata: Callable[[Any], dict] | None = None
    task_scorers: Mapping[str, Callable[[ScoringContext], TaskScorer]] = dataclasses.field(default_factory=dict)
    checkpoint_config: Callable[[str], Any] | None = None
    default_max_new_tokens: Callable[[str], int] | None = None
    predictions: Callable[..., list[SamplePrediction]] | None = None
    unused_modules: Callable[[ModelConfig, DataConfig], tuple[str, ...]] | None = None
    llm_path: str = ""
    read_quick_start: Callable[[str], Any] | None = None
    router_towers: tuple[RouterTower, ...] = ()
    mask_prompts: Callable[[str, str], Any] | None = None
    token_modality: Callable[[Mapping[str, Any], Any], Any] | None = None


def all_router_towers(family: Family) -> tuple[RouterTower, ...]:
    """The towers whose router usage the train step logs: the LLM (``llm_path``, its
    ``num_llm_layers``, rows = the batch's ``attention_mask``) then ``family.router_towers``."""
    if family.router_towers and not family.llm_path:
        raise ValueError(f"family {family.name!r}: router_towers need llm_path (an empty one would take "
                         "the other towers' gates as the LLM's)")
    llm = RouterTower("", family.llm_path, family.num_llm_layers, lambda batch, cfg: batch["attention_mask"])
    return (llm, *family.router_towers)
