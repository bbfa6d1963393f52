"""Host-side sequence assembly: placeholder expansion, left padding, media slot indices.

The model never sees ragged data. Each ``<video>`` / ``<image>`` / ``<audio>`` token is
expanded here into a run of slots (the placeholder id repeated), and ``media_index``
says which row of the model's fixed-size media buffer fills each slot (-1 = text).
The model then splices with one gather, so batch composition never changes a shape.

Mirrors the original's collation: left padding with the pad id, labels -100 on media and
padding, ``position_ids = max(cumsum(mask) - 1, 0)``.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from crab_jax.models.llama import position_ids_from_mask
from crab_jax.models.losses import IGNORE_INDEX



@dataclasses.dataclass(frozen=True)
class MediaBlock:
    """Where a placeholder's rows live in the media buffer: ``[offset, offset + length)``."""

    offset: int
    length: int


@dataclasses.dataclass
class AssembledSample:
    input_ids: np.ndarray      # [n] expanded ids (placeholder id on media slots)
    labels: np.ndarray         # [n]
    media_index: np.ndarray    # [n] row in the media buffer, -1 for text
    expansion_shift: int       # sum over placeholders of (block length - 1)


def expand_placeholders(
    input_ids: Sequence[int], labels: Sequence[int], blocks: Mapping[int, MediaBlock]
) -> AssembledSample:
    """Expands each placeholder id in ``blocks`` into its run of media slots.

    Args:
      input_ids, labels: ``[n_raw]`` ids / labels as tokenised (one id per placeholder).
      blocks: placeholder id -> :class:`MediaBlock`; every placeholder present must be listed.
    """
    ids_out, labels_out, index_out = [], [], []
    shift = 0
    for tok, lab in zip(np.asarray(input_ids).tolist(), np.asarray(labels).tolist()):
        block = blocks.get(tok)
        if block is None:
            ids_out.append(tok)
            labels_out.append(lab)
            index_out.append(-1)
            continue
        ids_out.extend([tok] * block.length)
        labels_out.extend([IGNORE_INDEX] * block.length)
        index_out.extend(range(block.offset, block.offset + block.length))
        shift += block.length - 1
    return AssembledSample(np.asarray(ids_out, np.int32), np.asarray(labels_out, np.int32),
                           np.asarray(index_out, np.int32), shift)


def left_pad_batch(samples: Sequence[AssembledSample], length: int | None, pad_id: int) -> dict[str, np.ndarray]:
    """Left-pads assembled samples to ``length`` (default: the longest) -> batch arrays ``[b, length]``."""
    longest = max(len(s.input_ids) for s in samples)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sample has {longest} tokens after expansion, more than the bucket length {length}")
    b = len(samples)
    out = {
        "input_ids": np.full((b, length), pad_id, np.int32),
        "labels": np.full((b, length), IGNORE_INDEX, np.int32),
        "media_index": np.full((b, length), -1, np.int32),
        "attention_mask": np.zeros((b, length), np.int32),
        "pad_left": np.zeros((b,), np.int32),
    }
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        pad = length - n
        out["input_ids"][i, pad:] = s.input_ids
        out["labels"][i, pad:] = s.labels
        out["media_index"][i, pad:] = s.media_index
        out["attention_mask"][i, pad:] = 1
        out["pad_left"][i] = pad
    out["position_ids"] = position_ids_from_mask(out["attention_mask"]).astype(np.int32)
    return out


def mask_token_positions(
    raw_input_ids: Sequence[int],
    mask_token_ids: Sequence[int],
    *,
    expansion_shift: int,
    pad_left: int,
    is_seg: bool,
    fallback_raw_positions: Sequence[int],
    offset: int = -1,
) -> np.ndarray:
    """Positions in the padded sequence whose hidden states prompt the mask decoder.

    Reproduces the original: for a segmentation sample, the raw index of each ``<mask_k>``
    token; for any other sample, the fixed raw indices ``fallback_raw_positions`` (2..7 in
    Crab: meaningless but still decoded). Either is shifted by the expansion of every
    placeholder in the sample, the left padding, and ``offset`` (-1 in the original: the
    hidden state *before* each mask token, i.e. the one that predicts it).
    """
    raw = np.asarray(raw_input_ids)
    if is_seg:
        positions = []
        for tok in mask_token_ids:
            hits = np.nonzero(raw == tok)[0]
            if len(hits) == 0:
                raise ValueError(f"segmentation sample has no mask token id {tok} in its input ids")
            positions.append(int(hits[0]))
    else:
        positions = list(fallback_raw_positions)
    return np.asarray(positions, np.int32) + expansion_shift + pad_left + offset
