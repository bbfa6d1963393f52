"""Crab's added tokens: the one home of their names, order and count.

The original adds 11 placeholder / wrapper tokens as special tokens, then ``<mask_0..5>`` as
ordinary ones (``image_scale_nums`` 2 x ``token_nums_per_scale`` 3), all after LLaMA's 32000
ids and in this order; checkpoints, tokenizers and the model's ``special_token_ids`` must
agree on it.
"""

from __future__ import annotations

from crab_jax.data.records.crab import MASK_TOKENS as RECORD_MASK_TOKENS

SPECIAL_TOKENS = ("<image>", "<image_start>", "<image_end>", "<video>", "<video_start>", "<video_end>",
                  "<audio>", "<audio_start>", "<audio_end>", "<mask_start>", "<mask_end>")
MASK_TOKENS = RECORD_MASK_TOKENS   # the AV-UIE targets' MASK6
NUM_MASK_TOKENS = len(MASK_TOKENS)
ADDED_TOKENS = SPECIAL_TOKENS + MASK_TOKENS
NUM_ADDED_TOKENS = len(ADDED_TOKENS)   # 17
LLAMA_VOCAB = 32000                    # LLaMA-2's own ids, before the added tokens
PAD_TOKEN_ID = 2                       # ``</s>``: LLaMA's EOS, which Crab also pads with
EOS_TOKEN_ID = 2
BOS_TOKEN_ID = 1


def special_token_ids(base_vocab: int, num_mask_tokens: int = NUM_MASK_TOKENS) -> dict[str, int]:
    """Crab's added tokens in the original order, after ``base_vocab`` ids."""
    names = list(SPECIAL_TOKENS) + [f"<mask_{i}>" for i in range(num_mask_tokens)]  # n may differ (tiny configs)
    return {name: base_vocab + i for i, name in enumerate(names)}


def base_vocab_of(tokenizer) -> int:
    """Ids before Crab's added tokens (they come last, in order: ``<image>`` is the first)."""
    first = int(tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[0]))
    if len(tokenizer) != first + NUM_ADDED_TOKENS:
        raise ValueError(f"tokenizer: {len(tokenizer)} ids but Crab's tokens start at {first}; expected them "
                         f"to be the last {NUM_ADDED_TOKENS}")
    return first
