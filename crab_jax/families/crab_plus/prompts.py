"""Crab+'s prompts (spec B.3): the conversation of an AV-UIE v2 record as the original builds it.

A conversation is the original's list of messages: the system prompt, the user turn (a list of
content items in the task's order: lead text, media items, instruction text) and, for
training, the assistant turn holding the record's target field verbatim. Test conversations
stop after the user turn (the chat template then adds the generation prompt, see
:mod:`crab_jax.families.crab_plus.chat`); their reference is the record's ``gt``.

Every string is the released one (the weights were trained on them), so keep each character.
Media items carry the record's paths (relative to the data root) and the keys the original
puts on them: videos ``resized_height`` / ``resized_width`` / ``nframes``, images the
resized size, audios ``task`` (the crop rule, spec B.2) and, for s4 / ms3 / ref_avs, ``idx``
(the one-second slice).
"""

from __future__ import annotations

from typing import Any

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.crab_plus import CRAB_PLUS_IMAGE_TASKS
from crab_jax.data.records.record import Record
from crab_jax.families.crab_plus.model import CrabPlusConfig

SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                 "perceiving auditory and visual inputs, as well as generating text and speech.")

# Lead texts: the first user item.
L_VA = "This is a video and an audio:"
L_IA = "This is an image and an audio:"
L_2V = "These are two videos and an audio:"
L_2A = "This is a video and two audio clips:"

_ACTION = "Please identify the action taking place in the video."
_EMOTION = "Please judge the person's emotion at the moment."
_EVENTS = "Please describe the events and time range that occurred in the video."
_SEG_BOX = ("Please identify the category of the object producing the sound in the video frame. Then, provide "
            "the bounding box and three pixel points of the object that is making the sound within the frame.")
# Ref-AVS: ``{d}`` is the lower-cased description (train) or object (test); the quotes are literal.
R_REF = ('Please analyze the video frame and audio to find the object described as <des>{d}</des>. Answer with '
         '"true" or "false" whether the object exists. If it exists, respond with a sentence identifying the '
         "object's name, its bounding box, and three pixel points; if not, state that the object is absent.")

# Tasks whose instruction does not depend on the record.
FIXED_INSTRUCTIONS = {
    "a2v": "Please listen to the audio and indicate which of the two videos matches what you hear.",
    "v2a": "Please view the video and indicate which of the two audio clips matches what you see.",
    "ks": _ACTION, "ucf": _ACTION,
    "meld": _EMOTION, "mer24": _EMOTION, "cremad": _EMOTION, "mafw": _EMOTION, "dfew": _EMOTION,
    "ave": _EVENTS, "unav": _EVENTS,
    "avvp": ("Please determine the events that occur based on the visual and audio information in the video, "
             "as well as the start and end times of these events."),
    "avcap": "Please describe this video and audio.",
    "s4": _SEG_BOX, "ms3": _SEG_BOX,
    "arig": "Please recognize the category of object that makes the sound and then output its bounding box.",
}
# Image tasks whose audio item names the one-second slice (``idx``); arig's item has none.
AUDIO_SLICE_TASKS = ("s4", "ms3", "ref_avs")


def crab_plus_instruction(record: Record) -> str:
    """The instruction text item (the user turn's last item) of a Crab+ record."""
    task, f = record.task, record.fields
    if task in FIXED_INSTRUCTIONS:
        return FIXED_INSTRUCTIONS[task]
    if task == "avqa":
        return f"Please answer this question: {_need(record, f, 'question')}"
    if task == "avqa_thu":
        # no space after "options:" (the original's f-string)
        return (f"Please answer the question based on the options: {_need(record, f, 'question_text')}, "
                f"options:{_need(record, f, 'multi_choice')}")
    if task == "ref_avs":
        return R_REF.format(d=str(_need(record, f, "description" if record.mode == "train" else "object")).lower())
    raise ValueError(f"{record.source}: no Crab+ prompt for task {task!r}")


def crab_plus_content(record: Record, *, frame_size: int = CrabPlusConfig.frame_size) -> list[dict[str, Any]]:
    """The user turn's content items: lead text, media items in the task's order, instruction.

    Orders (spec B.3): a2v ``L_2V, audio, video1, video2``; v2a ``L_2A, video, audio1, audio2``;
    image tasks ``L_IA, image, audio``; the other tasks ``L_VA, video, audio``.
    """
    task = record.task
    if record.family != "crab_plus":
        raise ValueError(f"{record.source}: a {record.family!r} record has no Crab+ prompt")
    image = task in CRAB_PLUS_IMAGE_TASKS
    want_videos, want_audios = {"a2v": (2, 1), "v2a": (1, 2)}.get(task, (0 if image else 1, 1))
    if len(record.videos) != want_videos or len(record.audios) != want_audios or image != (record.image_path is not None):
        raise BadRecordError(record.source, f"{task} needs {want_videos} video(s), {want_audios} audio(s) and "
                                            f"{int(image)} image, the record has {len(record.videos)}, "
                                            f"{len(record.audios)} and {int(record.image_path is not None)}")

    def video(path):
        return {"type": "video", "video": path, "resized_height": frame_size, "resized_width": frame_size,
                "nframes": record.num_frames}

    def audio(path):
        item = {"type": "audio", "audio": path, "task": task}
        if task in AUDIO_SLICE_TASKS:
            if record.audio is None or record.audio.idx is None:
                raise BadRecordError(record.source, f"{task} audio needs its slice index 'idx'")
            item["idx"] = record.audio.idx
        return item

    if task == "a2v":
        media = [audio(record.audios[0])] + [video(v) for v in record.videos]
        lead = L_2V
    elif task == "v2a":
        media = [video(record.videos[0])] + [audio(a) for a in record.audios]
        lead = L_2A
    elif image:
        media = [{"type": "image", "image": record.image_path, "resized_height": frame_size,
                  "resized_width": frame_size}, audio(record.audios[0])]
        lead = L_IA
    else:
        media = [video(record.videos[0]), audio(record.audios[0])]
        lead = L_VA
    return [{"type": "text", "text": lead}, *media, {"type": "text", "text": crab_plus_instruction(record)}]


def crab_plus_target(record: Record) -> str:
    """The training target: the task's target field, verbatim (the reader's ``answer``)."""
    if record.answer is None:
        raise BadRecordError(record.source, f"{record.task} training record has no target text")
    return record.answer


def crab_plus_gt(record: Record) -> str:
    """The test reference the original's inference stores (spec B.3 "test GT string"; the
    reader :mod:`crab_jax.data.records.crab_plus` formats it from the record's fields)."""
    if record.gt is None:
        raise BadRecordError(record.source, f"{record.task} test record has no reference string")
    return record.gt


def crab_plus_conversation(record: Record, *, frame_size: int = CrabPlusConfig.frame_size) -> list[dict[str, Any]]:
    """The original's ``conv``: system, user (:func:`crab_plus_content`) and, for a training
    record, the assistant turn with :func:`crab_plus_target`; a test record stops at the user."""
    conv = [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": crab_plus_content(record, frame_size=frame_size)}]
    if record.mode == "train":
        conv.append({"role": "assistant", "content": crab_plus_target(record)})
    elif record.mode != "test":
        raise ValueError(f"{record.source}: Crab+ records are 'train' or 'test', got mode {record.mode!r}")
    return conv


def _need(record: Record, fields, name: str):
    value = fields.get(name)
    if value is None:
        raise BadRecordError(record.source, f"{record.task} prompt needs {name!r}")
    return value


__all__ = [
    "SYSTEM_PROMPT", "L_VA", "L_IA", "L_2V", "L_2A", "R_REF", "FIXED_INSTRUCTIONS", "AUDIO_SLICE_TASKS",
    "crab_plus_instruction", "crab_plus_content", "crab_plus_target", "crab_plus_gt", "crab_plus_conversation",
]
