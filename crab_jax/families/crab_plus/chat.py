"""Crab+'s chat text (spec B.1): the Qwen2.5-Omni template, placeholder expansion, tokens, labels.

One sample, as the original's ``OmniDataset.__getitem__`` makes it:

1. :func:`render_chat` renders the conversation with the checkpoint's chat template (user
   items with no separators; training ``add_generation_prompt=False`` with the assistant
   turn, test ``add_generation_prompt=True``);
2. :func:`keep_last_placeholder` drops all but the last video (a2v) / audio (v2a) placeholder,
   since the pair goes in as one concatenated video / waveform;
3. :func:`expand_media` repeats each ``<|AUDIO|>`` / ``<|IMAGE|>`` / ``<|VIDEO|>`` as many times
   as its encoder gives LLM tokens (the processor's ``replace_multimodal_special_tokens``,
   ``use_audio_in_video=False``);
4. the fast tokenizer encodes the expanded text; :func:`assistant_labels` supervises from the
   ``\\n`` after ``<|im_start|>assistant`` through the first ``<|im_end|>``.

Everything here is host-side Python / numpy; no padding (the collator right-pads).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from crab_jax.data.errors import BadRecordError
from crab_jax.families.crab_plus.tokens import ADDED_TOKENS
from crab_jax.models.losses import IGNORE_INDEX
from crab_jax.models.qwen_audio import audio_token_count

AUDIO, IMAGE, VIDEO = "<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>"
AUDIO_PLACEHOLDER = f"<|audio_bos|>{AUDIO}<|audio_eos|>"
IMAGE_PLACEHOLDER = f"<|vision_bos|>{IMAGE}<|vision_eos|>"
VIDEO_PLACEHOLDER = f"<|vision_bos|>{VIDEO}<|vision_eos|>"
# The template's system turn when the conversation has none (Crab+ always gives one).
TEMPLATE_SYSTEM = "You are a helpful assistant."
ASSISTANT_HEADER = "<|im_start|>assistant"
IM_END = "<|im_end|>"
# Tasks whose media pair enters the processor as one item: the placeholder kept once (the last).
PAIRED_PLACEHOLDER = {"a2v": VIDEO_PLACEHOLDER, "v2a": AUDIO_PLACEHOLDER}


# ------------------------------------------------------------------------------ rendering


def _render_item(item: Mapping[str, Any]) -> str:
    # The template's test order: image, then audio, then video, then text (a key test as well as
    # the type, so an item is what it carries).
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return IMAGE_PLACEHOLDER
    if kind == "audio" or "audio" in item or "audio_url" in item:
        return AUDIO_PLACEHOLDER
    if kind == "video" or "video" in item:
        return VIDEO_PLACEHOLDER
    if "text" in item:
        return str(item["text"])
    return ""


def render_chat(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
    """The Qwen2.5-Omni chat template (``chat_template.json``, no vision / audio ids) on
    ``messages`` (``{"role", "content"}``; content a string or a list of items).

    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message (a default system turn first
    when the first message is not one), then ``<|im_start|>assistant\\n`` when
    ``add_generation_prompt``.
    """
    parts = []
    for n, message in enumerate(messages):
        if n == 0 and message["role"] != "system":
            parts.append(f"<|im_start|>system\n{TEMPLATE_SYSTEM}{IM_END}\n")
        content = message["content"]
        body = content if isinstance(content, str) else "".join(_render_item(item) for item in content)
        parts.append(f"<|im_start|>{message['role']}\n{body}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{ASSISTANT_HEADER}\n")
    return "".join(parts)


def keep_last_placeholder(text: str, placeholder: str) -> str:
    """``text`` with every occurrence of ``placeholder`` but the last one deleted."""
    count = text.count(placeholder)
    return text.replace(placeholder, "", count - 1) if count > 1 else text


def render_task_chat(messages: Sequence[Mapping[str, Any]], task: str, *, add_generation_prompt: bool) -> str:
    """:func:`render_chat` + the a2v / v2a rule (:data:`PAIRED_PLACEHOLDER`)."""
    text = render_chat(messages, add_generation_prompt=add_generation_prompt)
    return keep_last_placeholder(text, PAIRED_PLACEHOLDER[task]) if task in PAIRED_PLACEHOLDER else text


# ------------------------------------------------------------------------------ expansion


@dataclasses.dataclass(frozen=True)
class MediaTokens:
    """LLM tokens of each media item, in the order its placeholder appears in the text.

    Attributes:
      audio: per audio item, :func:`audio_tokens` of its mel frames.
      image: per image, :func:`vision_tokens` of its grid.
      video: per video (an a2v pair is one video), :func:`vision_tokens` of its grid.
    """

    audio: Sequence[int] = ()
    image: Sequence[int] = ()
    video: Sequence[int] = ()


def vision_tokens(grid_thw: Sequence[int], merge_size: int) -> int:
    """LLM tokens of an image / video with patch grid ``(t, h, w)``: ``t*h*w / merge_size²``
    (224² frames: ``(1, 16, 16)`` -> 64, ``(t, 16, 16)`` -> ``64 t``)."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // (merge_size * merge_size)


def audio_tokens(mel_frames: int) -> int:
    """LLM tokens of a clip with ``mel_frames`` valid frames (``feature_attention_mask`` sum)."""
    return audio_token_count(int(mel_frames))


_MEDIA_TOKEN = re.compile("|".join(re.escape(t) for t in (AUDIO, IMAGE, VIDEO)))


def expand_media(text: str, media: MediaTokens) -> str:
    """Each ``<|AUDIO|>`` / ``<|IMAGE|>`` / ``<|VIDEO|>`` of ``text`` repeated its item's count.

    Raises:
      ValueError: the text and ``media`` disagree on the number of items of a kind.
    """
    counts = {AUDIO: list(media.audio), IMAGE: list(media.image), VIDEO: list(media.video)}
    used = dict.fromkeys(counts, 0)

    def repeat(match: re.Match) -> str:
        token = match.group()
        if used[token] >= len(counts[token]):
            raise ValueError(f"the text has more {token} placeholders than the {len(counts[token])} given counts")
        used[token] += 1
        return token * int(counts[token][used[token] - 1])

    out = _MEDIA_TOKEN.sub(repeat, text)
    unused = {t: len(c) - used[t] for t, c in counts.items() if len(c) != used[t]}
    if unused:
        raise ValueError(f"media items without a placeholder in the text: {unused}")
    return out


# ------------------------------------------------------------------------------ labels


@dataclasses.dataclass
class LabelStats:
    """Running counts over tokenised training samples: ``unsupervised`` = samples without an
    ``<|im_end|>`` after the assistant header (all labels -100, as the original leaves them)."""

    samples: int = 0
    unsupervised: int = 0


def _find(ids: np.ndarray, pattern: Sequence[int], start: int = 0) -> int:
    """First index ``>= start`` where ``pattern`` occurs in ``ids``, else -1."""
    k = len(pattern)
    if k == 0 or len(ids) - start < k:
        return -1
    windows = np.lib.stride_tricks.sliding_window_view(ids[start:], k)
    hits = np.flatnonzero((windows == np.asarray(pattern, ids.dtype)).all(-1))
    return start + int(hits[0]) if len(hits) else -1


def assistant_labels(input_ids: np.ndarray, header_ids: Sequence[int], end_ids: Sequence[int], *,
                     source: str) -> tuple[np.ndarray, bool]:
    """The original's labels (spec B.1): -100, except ``[start, end + len(end_ids))`` copied
    from ``input_ids``, where ``start`` follows the first ``header_ids`` (so the ``\\n`` after
    ``<|im_start|>assistant`` is supervised) and ``end`` is the first ``end_ids`` at or after it.

    Args:
      input_ids: ``[n]`` int.
      header_ids / end_ids: the tokenizer's ids of ``"<|im_start|>assistant"`` / ``"<|im_end|>"``.
      source: the record, for the error.
    Returns:
      labels ``[n]`` int64 and whether any token is supervised (False: no ``<|im_end|>``).
    Raises:
      BadRecordError: no assistant header (the original crashes on such a sample).
    """
    ids = np.asarray(input_ids, np.int64)
    labels = np.full(ids.shape, IGNORE_INDEX, np.int64)
    head = _find(ids, header_ids)
    if head < 0:
        raise BadRecordError(source, f"no {ASSISTANT_HEADER!r} in the tokenised text: nothing to supervise")
    start = head + len(header_ids)
    end = _find(ids, end_ids, start)
    if end < 0:
        return labels, False
    stop = end + len(end_ids)
    labels[start:stop] = ids[start:stop]
    return labels, True


# ------------------------------------------------------------------------------ samples


@dataclasses.dataclass(frozen=True)
class ChatSample:
    """One tokenised sample (unpadded).

    Attributes:
      text: the rendered, expanded text the tokenizer encoded.
      input_ids: ``[n]`` int64.
      attention_mask: ``[n]`` int64 ones.
      labels: ``[n]`` int64 (training), None for a generation prompt.
      supervised: True when some label is not -100 (False: a generation prompt, or no
        ``<|im_end|>`` after the assistant header).
    """

    text: str
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray | None
    supervised: bool


def tokenize_chat(tokenizer, messages: Sequence[Mapping[str, Any]], media: MediaTokens, *, task: str,
                  generation: bool, source: str = "<conversation>", stats: LabelStats | None = None) -> ChatSample:
    """Renders, expands and tokenises one conversation as the original's dataset does.

    Args:
      tokenizer: the Qwen2.5-Omni fast tokenizer (:func:`load_tokenizer`).
      messages: the conversation (:func:`crab_jax.families.crab_plus.prompts.crab_plus_conversation`).
      media: token counts of its media items, in placeholder order.
      task: the record's task (the a2v / v2a placeholder rule).
      generation: test sample: ``add_generation_prompt=True`` and no labels; else a training
        sample with labels.
      source: names the record in errors.
      stats: counts training samples and those left unsupervised.
    """
    text = expand_media(render_task_chat(messages, task, add_generation_prompt=generation), media)
    ids = np.asarray(tokenizer(text)["input_ids"], np.int64)
    labels, supervised = None, not generation
    if not generation:
        labels, supervised = assistant_labels(ids, tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False),
                                              tokenizer.encode(IM_END, add_special_tokens=False), source=source)
        if stats is not None:
            stats.samples += 1
            stats.unsupervised += int(not supervised)
    return ChatSample(text, ids, np.ones_like(ids), labels, supervised)


def stack_samples(samples: Iterable[ChatSample], pad_id: int) -> dict[str, np.ndarray]:
    """The collator: right-pads ``input_ids`` with ``pad_id``, ``labels`` with -100 and
    ``attention_mask`` with 0 to the longest sample -> ``[b, S]`` int64 arrays (``labels``
    only when every sample has them)."""
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to stack")
    seq = max(len(s.input_ids) for s in samples)
    out = {"input_ids": np.full((len(samples), seq), pad_id, np.int64),
           "attention_mask": np.zeros((len(samples), seq), np.int64)}
    with_labels = all(s.labels is not None for s in samples)
    if with_labels:
        out["labels"] = np.full((len(samples), seq), IGNORE_INDEX, np.int64)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        out["input_ids"][i, :n] = s.input_ids
        out["attention_mask"][i, :n] = s.attention_mask
        if with_labels:
            out["labels"][i, :n] = s.labels
    return out


# ------------------------------------------------------------------------------ tokenizer


def load_tokenizer(path: str | os.PathLike):
    """The Qwen2.5-Omni fast tokenizer from a local folder (never downloads).

    A tokenizer without any of :data:`~crab_jax.families.crab_plus.tokens.ADDED_TOKENS` (the
    synthetic data's word tokenizer) gets them appended, in order; one that has them must have
    all of them in order, right after its text ids (else the ids would not match the
    checkpoint's), and is refused otherwise. Its ``eos_token`` is ``<|im_end|>``, as in
    Qwen2.5-Omni's own tokenizer: every answer (and its labels) ends there, so generation must
    stop there (a word tokenizer's own ``</s>`` never ends an answer).
    """
    from transformers import AutoTokenizer  # heavy; only where a tokenizer is built

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: tokenizer folder not found")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    vocab = tokenizer.get_vocab()
    if not any(t in vocab for t in ADDED_TOKENS):
        tokenizer.add_special_tokens({"additional_special_tokens": list(ADDED_TOKENS)},
                                     replace_additional_special_tokens=False)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS]
    if ids != list(range(ids[0], ids[0] + len(ADDED_TOKENS))) or tokenizer.unk_token_id in ids:
        raise ValueError(f"{path}: the Qwen2.5-Omni added tokens are missing or out of order: "
                         f"{dict(zip(ADDED_TOKENS, ids))}")
    tokenizer.eos_token = IM_END
    return tokenizer


__all__ = [
    "AUDIO_PLACEHOLDER", "IMAGE_PLACEHOLDER", "VIDEO_PLACEHOLDER", "PAIRED_PLACEHOLDER", "MediaTokens",
    "LabelStats", "ChatSample", "render_chat", "keep_last_placeholder", "render_task_chat", "vision_tokens",
    "audio_tokens", "expand_media", "assistant_labels", "tokenize_chat", "stack_samples", "load_tokenizer",
]
