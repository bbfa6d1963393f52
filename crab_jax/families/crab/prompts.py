"""Crab's prompts: per-task instruction / target text, the LLaMA-2 chat template, and the
tokenisation into raw ids and labels (one id per ``<video>`` / ``<image>`` / ``<audio>``;
:mod:`crab_jax.data.text.sequence` expands those later).

Every string is the released one (spec A.3 / A.4; the weights were trained on them), so
keep each character. Tokenisation reproduces the original exactly: the chat-templated
instruction and the target are tokenised as **two separate strings** with
``tokenizer.tokenize`` + ``convert_tokens_to_ids`` and concatenated; no BOS/EOS is added
(``<s>`` comes from the template text, ``</s>`` from the target text); labels are -100 on
the instruction.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.crab import AVQA_FORMAT_TASKS, ORDINALS
from crab_jax.data.records.record import Record
from crab_jax.families.crab.tokens import MASK_TOKENS, SPECIAL_TOKENS
from crab_jax.models.losses import IGNORE_INDEX

SYSTEM_MESSAGE = "You are a helpful assistant."


VIDEO = "This is a video:\n<video_start><video><video_end>\n"
IMAGE = "This is an image:\n<image_start><image><image_end>\n"
AUDIO = "This is an audio:\n<audio_start><audio><audio_end>\n"
H_AV = VIDEO + AUDIO   # heads of the AV tasks
H_IA = IMAGE + AUDIO   # heads of the image + audio tasks

_SEG_QUESTION = ("Please recognize the category of object making sound in the video, and then segment "
                 "out the object that makes the sound at the {th} second of the video.")
_QS_SEGMENT = "Please segment out the object that makes the sound in the image."
AVVP_QUESTION = ("Please determine the events that occur based on the visual and audio information in the "
                 "video, as well as the start and end times of these events.")
AVVP_QS_QUESTION = ("Please determine the events that occur based on the visual and audio information, "
                    "as well as the start and end time of these events.")
AVE_QUESTION = "Please describe the events and time range that occurred in the video."


def crab_instruction(record: Record) -> str:
    """The user instruction of a Crab record (before the chat template), spec A.3 / A.4."""
    task, mode, f = record.task, record.mode, record.fields
    qs, test = mode == "quick_start", mode == "test"
    if task in AVQA_FORMAT_TASKS:  # AVQA and the synthetic QA tasks
        return H_AV + f"Please answer this question: {_need(record, record.question, 'question')}"
    if task == "ave":
        return H_AV + AVE_QUESTION
    if task == "avvp":
        return H_AV + (AVVP_QS_QUESTION if qs else AVVP_QUESTION)
    if task == "avcap":
        return H_AV + ("Please describe this video." if test else "Please describe this video and audio.")
    if task == "arig":
        if qs:
            return H_IA + "Please output the location coordinates of sounding object."
        return H_IA + ("Please recognize the category of object that makes the sound and then output "
                       + ("the" if test else "its") + " location coordinates.")
    if task in ("s4", "ms3", "avss"):
        if qs:
            return H_IA + _QS_SEGMENT
        if task == "avss" and test:
            return H_IA + "Please recognize the category of the object making the sound in the image and segment it out."
        # quirk: MS3's test prompt says "third" for every frame
        th = "third" if (task == "ms3" and test) else ORDINALS[_need(record, record.frame_idx, "frame_idx")]
        return H_AV + _SEG_QUESTION.format(th=th)
    if task == "ref-avs":
        exp = str(_need(record, f.get("exp"), "exp"))
        if qs:
            return H_IA + f"Please segment out {exp.lower()} in the image."
        if test:
            return (H_AV + IMAGE + "Please segment out the corresponding object in the image based on the "
                    f"referential expression: {exp}")
        th = ORDINALS[_need(record, record.frame_idx, "frame_idx")]
        return H_AV + f"Please segment out {exp.lower()} at the {th} second in the video."
    if task == "image_caption":
        return IMAGE + f"Please answer the question:\n{_need(record, record.question, 'question')}"
    if task == "video_caption":
        return VIDEO + f"Please answer the question:\n{_need(record, record.question, 'question')}"
    if task == "audio_caption":
        return AUDIO + "Please describe this audio."
    if task == "lvis_seg":
        return IMAGE + (f"Please segment out the object that corresponding to the {f['name']}, {f['def']} "
                        "in the image.")
    raise ValueError(f"{record.source}: no Crab prompt for task {task!r} (family {record.family!r})")


def _need(record: Record, value, name: str):
    if value is None:
        raise BadRecordError(record.source, f"{record.task} prompt needs {name!r}")
    return value


PRETRAIN_TASKS_WITH_SPACE_EOS = ("image_caption", "video_caption", "audio_caption", "lvis_seg")


def crab_target(record: Record, answer: str) -> str:
    """The target text: ``answer + "</s>"`` (fine-tuning) or ``answer + " </s>"`` (pretraining)."""
    return answer + (" </s>" if record.task in PRETRAIN_TASKS_WITH_SPACE_EOS else "</s>")


def llama2_chat(instruction: str, system: str = SYSTEM_MESSAGE) -> str:
    """What ``apply_chat_template([system, user], add_generation_prompt=True)`` renders for
    LLaMA-2-chat: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{instruction.strip()} [/INST]``."""
    return f"<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{instruction.strip()} [/INST]"


@dataclasses.dataclass(frozen=True)
class TokenizedPrompt:
    """Raw token ids of one sample (placeholders not yet expanded).

    Attributes:
      input_ids: ``[n]`` int64, instruction ids then target ids.
      labels: ``[n]`` int64, -100 on the instruction, the ids on the target.
      num_prompt_tokens: length of the instruction part.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    num_prompt_tokens: int


def tokenize_pair(tokenizer, instruction: str, target: str | None) -> TokenizedPrompt:
    """Tokenises like the original: two separate ``tokenize`` + ``convert_tokens_to_ids`` calls.

    ``instruction`` is the full chat-templated string; ``target`` None (generation) gives the
    instruction alone.
    """
    prompt = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(instruction))
    answer = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(target)) if target else []
    ids = np.asarray(list(prompt) + list(answer), np.int64)
    labels = np.concatenate([np.full(len(prompt), IGNORE_INDEX, np.int64), np.asarray(answer, np.int64)])
    return TokenizedPrompt(ids, labels, len(prompt))


def build_crab_text(record: Record, answer: str | None) -> tuple[str, str | None]:
    """``(chat-templated instruction, target with </s>)``; target None when ``answer`` is None."""
    instruction = llama2_chat(crab_instruction(record))
    return instruction, None if answer is None else crab_target(record, answer)


def tokenize_record(tokenizer, record: Record, answer: str | None) -> TokenizedPrompt:
    """Chat template + tokenisation of one Crab record (``answer`` from ``records.load_answer``)."""
    instruction, target = build_crab_text(record, answer)
    return tokenize_pair(tokenizer, instruction, target)


# ------------------------------------------------------------------------ tokenizer


def add_multimodal_tokens(tokenizer) -> dict[str, int]:
    """Adds Crab's 17 tokens in the original's order (11 special, then ``<mask_0..5>`` as
    non-special) when missing; returns token -> id. Refuses a tokenizer that has only some
    of them or has them out of order (ids would not match the checkpoints)."""
    vocab = tokenizer.get_vocab()
    wanted = SPECIAL_TOKENS + MASK_TOKENS
    present = [t for t in wanted if t in vocab]
    if not present:
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        tokenizer.add_tokens(list(MASK_TOKENS), special_tokens=False)
    elif len(present) != len(wanted):
        raise ValueError(f"tokenizer has only some of Crab's added tokens: missing "
                         f"{[t for t in wanted if t not in vocab]}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in wanted}
    first = ids[wanted[0]]
    if [ids[t] for t in wanted] != list(range(first, first + len(wanted))):
        raise ValueError(f"Crab's added tokens are not consecutive in the original order: {ids}")
    return ids


def load_tokenizer(path: str | os.PathLike, *, use_fast: bool | None = None):
    """Loads the LLaMA tokenizer from a local folder (never downloads), left padding,
    pad = eos when unset, Crab's tokens added (see :func:`add_multimodal_tokens`)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: tokenizer folder not found")
    kwargs: dict[str, Any] = dict(padding_side="left", local_files_only=True)
    if use_fast is not None:
        kwargs["use_fast"] = use_fast
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    add_multimodal_tokens(tokenizer)
    return tokenizer


def ordinal(idx: int) -> str:
    """0 -> ``"first"`` ... 9 -> ``"tenth"``."""
    return ORDINALS[idx]


__all__ = [
    "SYSTEM_MESSAGE", "H_AV", "H_IA", "TokenizedPrompt",
    "crab_instruction", "crab_target", "llama2_chat", "tokenize_pair", "tokenize_record", "build_crab_text",
    "add_multimodal_tokens", "load_tokenizer", "ordinal",
]
