"""Qwen2.5-Omni's added tokens: one home for their strings, order and the ids derived from them.

The tokenizer holds the byte-level BPE text ids first, then these 22 tokens in this order
(``<|endoftext|>`` = 151643 in the release), so every id is ``base_vocab + index``. The
thinker config may have more rows than the tokenizer (152064 vs 151665 in the release:
unused rows at the end).
"""

from __future__ import annotations

from crab_jax.families.crab_plus.model import ThinkerTokens

ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>",
    "<|IMAGE|>", "<|VIDEO|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
QWEN_BASE_VOCAB = 151643  # text ids of the released tokenizer
QWEN_CONFIG_VOCAB = 152064  # rows of the released embedding / lm_head


def thinker_tokens(base_vocab: int) -> ThinkerTokens:
    """The thinker's token ids for a tokenizer with ``base_vocab`` text ids."""
    at = {tok: base_vocab + i for i, tok in enumerate(ADDED_TOKENS)}
    return ThinkerTokens(pad=at["<|endoftext|>"], eos=at["<|im_end|>"], audio=at["<|AUDIO|>"],
                         image=at["<|IMAGE|>"], video=at["<|VIDEO|>"], audio_start=at["<|audio_bos|>"],
                         audio_end=at["<|audio_eos|>"], vision_start=at["<|vision_bos|>"],
                         vision_end=at["<|vision_eos|>"])


def base_vocab_of(tokenizer) -> int:
    """Text ids before the added tokens: the id of ``<|endoftext|>``."""
    return int(tokenizer.convert_tokens_to_ids(ADDED_TOKENS[0]))
