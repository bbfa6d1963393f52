"""Crab+'s conversations (spec B.3) from AV-UIE v2 records, checked against the spec's table.

The expected strings below are literal copies of spec B.1 / B.3 (the spec is the reference);
instructions and test GT strings with fields are the spec's f-strings, evaluated on the
entry written here. Entries are read back through ``crab_jax.data.records.crab_plus``.
"""

from __future__ import annotations

import dataclasses

import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.crab_plus import read_crab_plus_task
from crab_jax.data.records.record import AudioSpec, Record
from crab_jax.families.crab import prompts as crab_prompts
from crab_jax.families.crab_plus import prompts as P
from tests.data.records.annotations import write_file

# ---------------------------------------------------------------- spec B.1 / B.3, copied verbatim

SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
          "auditory and visual inputs, as well as generating text and speech.")
LEADS = {"L_VA": "This is a video and an audio:", "L_IA": "This is an image and an audio:",
         "L_2V": "These are two videos and an audio:", "L_2A": "This is a video and two audio clips:"}
R_REF = ('Please analyze the video frame and audio to find the object described as <des>{d}</des>. Answer with '
         '"true" or "false" whether the object exists. If it exists, respond with a sentence identifying the '
         "object's name, its bounding box, and three pixel points; if not, state that the object is absent.")
_AV = ("L_VA", "video", "audio", "instr")
_IA = ("L_IA", "image", "audio", "instr")
_ACTION = "Please identify the action taking place in the video."
_EMOTION = "Please judge the person's emotion at the moment."
_EVENTS = "Please describe the events and time range that occurred in the video."
_SEG = ("Please identify the category of the object producing the sound in the video frame. Then, provide the "
        "bounding box and three pixel points of the object that is making the sound within the frame.")
_S4_GT = "The object making the sound in the video is {a_obj}."


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of spec B.3's table (``test`` None: train-only; ``test_fields`` None: the
    train fields without the target)."""

    train: tuple[str, ...]
    target: str
    order: tuple[str, ...]
    instruction: str
    frames: int | None
    test: str | None
    test_fields: tuple[str, ...] | None = None


_MEDIA = ("video_path", "audio_path")
B3 = {
    "a2v": Row(("video1_path", "video2_path", "audio_path", "correct_video", "audio_event", "video1_event",
                "video2_event", "label"), "label", ("L_2V", "audio", "video1", "video2", "instr"),
               "Please listen to the audio and indicate which of the two videos matches what you hear.", 10,
               "<answer>{correct_video}</answer>."),
    "v2a": Row(("video_path", "audio1_path", "audio2_path", "correct_audio", "audio1_event", "video_event",
                "audio2_event", "label"), "label", ("L_2A", "video", "audio1", "audio2", "instr"),
               "Please view the video and indicate which of the two audio clips matches what you see.", 10,
               "<answer>{correct_audio}</answer>."),
    "ks": Row(_MEDIA + ("action", "label"), "label", _AV, _ACTION, 10, "<answer>{action}</answer>"),
    "ucf": Row(_MEDIA + ("new_label", "label"), "new_label", _AV, _ACTION, 10, "<answer>{label.lower()}</answer>"),
    "meld": Row(_MEDIA + ("label", "Emotion"), "label", _AV, _EMOTION, 4, "<answer>{Emotion}</answer>."),
    "mer24": Row(_MEDIA + ("label", "discrete"), "label", _AV, _EMOTION, 4, None),
    **{t: Row(_MEDIA + ("label", "emotion"), "label", _AV, _EMOTION, 4, "<answer>{emotion}</answer>.")
       for t in ("cremad", "mafw", "dfew")},
    "avqa": Row(_MEDIA + ("video_id", "question_id", "type", "question", "answer", "label"), "label", _AV,
                "Please answer this question: {question}", 10, "{answer}"),
    "avqa_thu": Row(_MEDIA + ("id", "video_name", "video_id", "question_relation", "question_type", "multi_choice",
                              "question_text", "answer", "label"), "label", _AV,
                    "Please answer the question based on the options: {question_text}, options:{multi_choice}", 10,
                    "{answer}"),
    "ave": Row(_MEDIA + ("event", "vid", "start_time", "end_time", "label_content"), "label_content", _AV, _EVENTS,
               10, "event:{event} start_time:{start_time} end_time:{end_time}"),
    "unav": Row(_MEDIA + ("vid", "label_content"), "label_content", _AV, _EVENTS, 10, None),
    "avvp": Row(_MEDIA + ("filename", "vid", "event", "label_content"), "label_content", _AV,
                "Please determine the events that occur based on the visual and audio information in the video, as "
                "well as the start and end times of these events.", 10, "{event}"),
    "avcap": Row(_MEDIA + ("video_id", "label_content"), "label_content", _AV, "Please describe this video and audio.",
                 10, None),
    "s4": Row(("image_path", "audio_path", "vid", "uid", "a_obj", "label_content"), "label_content", _IA, _SEG, None,
              _S4_GT, ("visual_path", "audio_path", "vid", "uid", "a_obj", "frame_idx")),
    "ms3": Row(("image_path", "audio_path", "vid", "uid", "a_obj", "frame_idx", "label_content"), "label_content",
               _IA, _SEG, None, _S4_GT, ("visual_path", "audio_path", "vid", "uid", "a_obj", "frame_idx")),
    "ref_avs": Row(("image_path", "audio_path", "vid", "fid", "uid", "idx", "description", "output"), "output", _IA,
                   R_REF, None, "{object}",
                   ("visual_path", "audio_path", "object", "split", "vid", "uid", "fid", "frame_idx")),
    "arig": Row(("image_path", "audio_path", "a_obj", "label_content"), "label_content", _IA,
                "Please recognize the category of object that makes the sound and then output its bounding box.",
                None, "The sounding object is {a_obj}. Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>.",
                ("visual_path", "audio_path", "top_left", "bottom_right", "a_obj", "frame_idx")),
}
TEST_TASKS = [t for t, row in B3.items() if row.test is not None]

# Values for the entries: mixed case (so the spec's .lower() shows), numbers where the reader
# parses them (the S4 / MS3 / ARIG frame is its file name).
_VALUES = {"correct_video": 2, "correct_audio": 1, "frame_idx": 3, "idx": 4, "start_time": 1, "end_time": 7,
           "top_left": [12, 34], "bottom_right": [150, 201], "image_path": "v1s/Uid_1/frames/3.jpg",
           "visual_path": "v1s/Uid_1/frames/3.jpg", "audio_path": "v1s/Uid_1/audio.wav"}


def entry_for(task: str, mode: str, **given) -> dict:
    """An AV-UIE v2 entry of ``task`` with every field spec B.3 names for ``mode``."""
    row = B3[task]
    fields = row.train if mode == "train" else (row.test_fields or tuple(f for f in row.train if f != row.target))
    video_task = task not in ("s4", "ms3", "ref_avs", "arig")
    out = {}
    for f in fields:
        if f in given:
            out[f] = given[f]
        elif video_task and f.endswith("_path"):
            out[f] = f"{f[:-5]}_Clip.{'mp4' if f.startswith('video') else 'wav'}"
        else:
            out[f] = _VALUES.get(f, f"{f} Value {task}")
    return out


def read_one(tmp_path, task: str, mode: str, entry: dict) -> Record:
    write_file(tmp_path, f"AVUIE_2/{task}/{mode}.json", [entry])
    (record,) = read_crab_plus_task(task, mode, tmp_path).records
    return record


def spec_text(template: str, entry: dict) -> str:
    """Evaluates one of the spec's f-strings on ``entry`` (+ the names the table uses)."""
    names = dict(entry)
    if "top_left" in entry:
        (names["x1"], names["y1"]), (names["x2"], names["y2"]) = entry["top_left"], entry["bottom_right"]
    if template == R_REF:
        return R_REF.format(d=str(entry.get("description", entry.get("object"))).lower())
    return eval("f" + repr(template), {}, names)  # the spec's own expression, e.g. {label.lower()}


def _check_user_turn(task: str, mode: str, entry: dict, content: list) -> None:
    row = B3[task]
    root = f"AVUIE_2/{task}/"
    assert len(content) == len(row.order)
    for item, slot in zip(content, row.order):
        if slot in LEADS:
            assert item == {"type": "text", "text": LEADS[slot]}
        elif slot == "instr":
            assert item == {"type": "text", "text": spec_text(row.instruction, entry)}
        elif slot.startswith("video"):
            field = "video_path" if slot == "video" else f"{slot}_path"
            assert item == {"type": "video", "video": root + "video/" + entry[field], "resized_height": 224,
                            "resized_width": 224, "nframes": row.frames}
        elif slot == "image":
            field = "image_path" if mode == "train" else "visual_path"
            assert item == {"type": "image", "image": root + entry[field], "resized_height": 224, "resized_width": 224}
        else:  # audio, audio1, audio2
            field = "audio_path" if slot == "audio" else f"{slot}_path"
            path = root + ("" if row.frames is None else "audio/") + entry[field]
            want = {"type": "audio", "audio": path, "task": task}
            if task in ("s4", "ms3", "ref_avs"):  # B.2: one slice at idx (s4 training fixes 0)
                want["idx"] = {("s4", "train"): 0, ("ref_avs", "train"): entry.get("idx")}.get(
                    (task, mode), entry.get("frame_idx"))
            assert item == want


@pytest.mark.parametrize("task", list(B3))
def test_train_conversation_every_task(tmp_path, task):
    entry = entry_for(task, "train")
    conv = P.crab_plus_conversation(read_one(tmp_path, task, "train", entry))
    assert [m["role"] for m in conv] == ["system", "user", "assistant"]
    assert conv[0]["content"] == SYSTEM
    _check_user_turn(task, "train", entry, conv[1]["content"])
    assert conv[2]["content"] == entry[B3[task].target]


@pytest.mark.parametrize("task", TEST_TASKS)
def test_test_conversation_every_task(tmp_path, task):
    entry = entry_for(task, "test")
    record = read_one(tmp_path, task, "test", entry)
    conv = P.crab_plus_conversation(record)
    assert [m["role"] for m in conv] == ["system", "user"] and conv[0]["content"] == SYSTEM
    _check_user_turn(task, "test", entry, conv[1]["content"])
    assert P.crab_plus_gt(record) == spec_text(B3[task].test, entry)


def test_spec_quirks_are_kept(tmp_path):
    # a2v GT keeps the raw correct_video (the "one"/"two" mapping is overwritten); avqa_thu has
    # no space after "options:"; ref_avs lower-cases the description / object.
    a2v = read_one(tmp_path, "a2v", "test", entry_for("a2v", "test", correct_video=1))
    assert P.crab_plus_gt(a2v) == "<answer>1</answer>."
    thu = read_one(tmp_path, "avqa_thu", "train", entry_for("avqa_thu", "train", question_text="Q?",
                                                            multi_choice="['a', 'b']"))
    assert P.crab_plus_instruction(thu).endswith("Q?, options:['a', 'b']")
    ref = Record(family="crab_plus", task="ref_avs", mode="test", split="test_s", source="s", image_path="i.jpg",
                 audios=("a.wav",), audio=AudioSpec("crab_plus", idx=0), fields={"object": "The Guitar"})
    assert '<des>the guitar</des>. Answer with "true" or "false"' in P.crab_plus_instruction(ref)


def test_v2a_content_order_from_a_record():
    rec = Record(family="crab_plus", task="v2a", mode="train", split="train", source="s", videos=("v.mp4",),
                 num_frames=10, audios=("a1.wav", "a2.wav"), answer="x")
    items = P.crab_plus_content(rec)
    assert [i["type"] for i in items] == ["text", "video", "audio", "audio", "text"]
    assert [i.get("audio") for i in items[2:4]] == ["a1.wav", "a2.wav"] and items[0]["text"] == LEADS["L_2A"]


def test_bad_records_are_refused():
    base = dict(family="crab_plus", split="train", source="train.json#7", num_frames=10)
    with pytest.raises(BadRecordError, match="train.json#7.*2 audio"):  # v2a with one audio
        P.crab_plus_content(Record(task="v2a", mode="train", videos=("v.mp4",), audios=("a.wav",), **base))
    with pytest.raises(BadRecordError, match="'question'"):
        P.crab_plus_instruction(Record(task="avqa", mode="train", videos=("v",), audios=("a",), **base))
    with pytest.raises(BadRecordError, match="'idx'"):  # an s4 audio item needs its slice
        P.crab_plus_content(Record(task="s4", mode="train", image_path="i.jpg", audios=("a",), **base))
    with pytest.raises(BadRecordError, match="no target"):
        P.crab_plus_conversation(Record(task="ks", mode="train", videos=("v",), audios=("a",), **base))
    with pytest.raises(BadRecordError, match="no reference"):
        P.crab_plus_gt(Record(task="ks", mode="test", videos=("v",), audios=("a",), **base))
    with pytest.raises(ValueError, match="mode"):
        P.crab_plus_conversation(Record(task="ks", mode="quick_start", videos=("v",), audios=("a",), answer="x",
                                        **base))
    with pytest.raises(ValueError, match="'crab' record"):
        P.crab_plus_content(Record(task="ave", mode="train", videos=("v",), audios=("a",),
                                   **{**base, "family": "crab"}))


def test_one_home_for_crab_plus_prompts():
    # The Crab+ texts live in crab_plus.prompts only; Crab's prompts keep Crab's.
    for name in ("crab_plus_instruction", "crab_plus_content", "CRAB_PLUS_SYSTEM", "L_VA", "L_IA", "L_2V", "L_2A",
                 "R_REF"):
        assert not hasattr(crab_prompts, name), name
    assert P.SYSTEM_PROMPT == SYSTEM and P.R_REF == R_REF
    assert (P.L_VA, P.L_IA, P.L_2V, P.L_2A) == tuple(LEADS.values())
    assert hasattr(crab_prompts, "crab_instruction") and hasattr(crab_prompts, "AVE_QUESTION")
