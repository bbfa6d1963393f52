"""A word-level LLaMA-style tokenizer built from a corpus (the synthetic dataset's, tests').

The real model uses LLaMA-2's sentencepiece tokenizer from a local folder; a tiny Crab
trained on the synthetic dataset needs a vocabulary of a few hundred words instead. This
builds one the way the parity fixtures' tokenizer is built: a Hugging Face fast tokenizer
with ``<unk>, <s>, </s>`` as ids 0, 1, 2, a word-level model, left padding, pad = eos,
and the LLaMA-2 chat template; the model family's ``load_tokenizer`` then adds its own tokens
(``added_tokens``, which are therefore kept out of the vocabulary here). Words are
split on whitespace only, so tagged answers (``<answer> left </answer>.``) decode back to
the same text and the task parsers read them unchanged.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS = "<unk>", "<s>", "</s>"


def build_word_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, added_tokens: Sequence[str]) -> str:
    """Writes a tokenizer folder whose vocabulary is every whitespace-separated word of
    ``texts`` (sorted, after the three specials), the family's ``added_tokens`` left out
    (the family adds them when it loads the tokenizer); returns the folder path."""
    not_words = set(added_tokens) | {UNK, BOS, EOS}
    words = set()
    for text in texts:
        words.update(_without(text, not_words).split())
    vocab = {UNK: 0, BOS: 1, EOS: 2}
    for w in sorted(words - set(vocab)):
        vocab[w] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                  pad_token=EOS, padding_side="left", clean_up_tokenization_spaces=False)
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    out_dir = os.fspath(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _without(text: str, tokens: set[str]) -> str:
    """``text`` with every one of ``tokens`` replaced by a space (longest first)."""
    for t in sorted(tokens, key=len, reverse=True):
        text = text.replace(t, " ")
    return text


# LLaMA-2-chat's template (system message folded into the first user turn).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
