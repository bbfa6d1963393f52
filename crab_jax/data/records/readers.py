"""Annotation readers: Crab's AV-UIE files, its quick-start requests, its pretraining sets
and Crab+'s ``AVUIE_2`` folder, all turned into one typed :class:`Record`.

Every media path in a :class:`Record` is **relative to the data root** (the config's
``data_root``); :func:`resolve` joins it. Nothing here opens a media file; the label text
files of AVQA / AVE are read lazily by :func:`load_answer`. Every problem with an
annotation file or one of its entries raises :class:`~crab_jax.data.errors.BadRecordError`
naming the file (``"<file>#<entry index>"`` for one entry) and the reason.

Folder layout under the data root (the folder names are :class:`CrabLayout` fields, so a
config can rename them; ``<avs>`` = ``CrabLayout.avs`` etc.)::

  <avqa>/valid_train_samples.json   [{video_id, question_id, type, video_path, audio_path,
  <avqa>/test_samples.json            question, answer}]   video_path/audio_path relative to
  <avqa>/converted_label/<question_id>.txt     <avqa> (train target text)
  <ave>/valid_train_samples.json    [{event, vid, start_time, end_time}]
  <ave>/test_samples.json
  <ave>/AVE/<vid>.mp4, <ave>/audio_data/<vid>.mp3, <ave>/converted_label/<vid>.txt
  <avvp>/train_samples.json         [{filename, vid, event, label}]  (no label -> skipped)
  <avvp>/test_samples.json          [{filename, vid, event}]
  <avvp>/llp_videos/<vid>.mp4, <avvp>/audio_data/<vid>.mp3
  <valor>/train_samples.json, <valor>/val_samples.json     [{video_id, desc}]
  <valor>/video_data/<video_id>.mp4, <valor>/audio_data/<video_id>.mp3
  <avs>/s4_samples.json, ms3_samples.json, avss_samples.json
                                    [{vid, uid, s_min, s_sec, a_obj, split, label}]
  <avs>/v1s/<uid>/{audio.wav, frames/<i>.jpg, labels_semantic/<i>.png}   (s4, i < 5)
  <avs>/v1m/<uid>/...                                                     (ms3, i < 5)
  <avs>/v2/<uid>/{audio.wav, frames/<i>.jpg, labels_rgb/<i>.png}         (avss, i < 10)
  <avs>/v1s_grounding_samples.json  [{split, audio_path, frame_path, mask_path, top_left,
                                      bottom_right, a_obj}]   paths relative to <avs>
  <ref_avs>/metadata.csv            rows vid,uid,split,fid,exp (header row tolerated)
  <ref_avs>/media/<vid>/{audio.wav, frames/<i>.jpg}, <ref_avs>/gt_mask/<vid>/fid_<fid>/0000<i>.png
  <llava>/llava_image_.json         [{image, conversations:[{value}, {value}]}]  (pretrain)
  <llava>/valid_valley_.json        [{video, conversations}]                     (pretrain)
  <audiocaps>/{train,val,test}.json [{audiocap_id, start_time, caption}]; data/<id>.wav
  <lvis>/train_samples.json         [{id, image_id, category_id, bbox, name, def, area}]
  <lvis>/train2017/<image_id:012d>.jpg, <lvis>/binary_mask/<id>.png
  <avuie2>/<task>/{train,test}.json Crab+ (spec B.3); video/audio tasks keep file names
                                    under <avuie2>/<task>/{video,audio}/, image tasks keep
                                    paths relative to <avuie2>/<task>/

The original stores absolute paths of its authors' machines in some files (AVQA's
``video_path``, ARIG's ``frame_path`` ...). An absolute path is rebased: its last components
(as many as the layout above has below the task folder) are kept, relative to the task folder.

Quick-start requests (the original's ``data/example.json``; paths relative to the data root):
``[{"task": "ave", "video_path": ..., "audio_path": ...}, {"task": "s4", "image_path": ...,
"audio_path": ..., "mask_path": ...}, {"task": "avqa", ..., "question": ...},
{"task": "ref-avs", ..., "exp": ...}]``.

Which prompt a record gets is decided by ``(family, task, mode)``, see
:mod:`crab_jax.families.crab.prompts`; ``mode`` is ``"train"``, ``"test"`` or ``"quick_start"``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import posixpath
import random
from typing import Any, Callable, Iterable, Mapping, Sequence

from crab_jax.data.errors import BadRecordError

# Crab fine-tuning tasks (spec A.3), with the spelling the original's ``task_name`` uses.
CRAB_TASKS = ("avqa", "ave", "avvp", "arig", "avcap", "s4", "ms3", "avss", "ref-avs")
# Crab pretraining sets (spec A.4).
PRETRAIN_TASKS = ("image_caption", "video_caption", "audio_caption", "lvis_seg")
# Crab+ AVUIE_2 tasks (spec B.3), spelled as its folders.
CRAB_PLUS_TASKS = ("a2v", "v2a", "ks", "ucf", "meld", "mer24", "cremad", "mafw", "dfew", "avqa",
                   "avqa_thu", "ave", "unav", "avvp", "ms3", "s4", "ref_avs", "arig", "avcap")
MODES = ("train", "test", "quick_start")
ORDINALS = ("first", "second", "third", "fourth", "fifth",
            "sixth", "seventh", "eighth", "ninth", "tenth")
VIDEO_FRAMES = 10           # frames sampled from a fine-tuning video (spec A.2.1)
PRETRAIN_VIDEO_FRAMES = 8   # ``video_frame_nums`` of video pretraining


@dataclasses.dataclass(frozen=True)
class AudioSpec:
    """How a clip's audio is cut (see :mod:`crab_jax.data.media.audio`).

    kind:
      ``"clip"``: ``tot`` consecutive segments (``audio.segment_clip``);
      ``"frame"``: the one segment ``idx`` of ``tot`` (``audio.segment_at_frame``,
      ``pad_short`` zero-pads a short one, ``pad_to_second`` first pads the clip to 1 s);
      ``"avqa"``: ten 2-s windows (``audio.segment_windows``);
      ``"seconds"``: consecutive 16000-sample windows over the whole clip (pretraining);
      ``"crab_plus"``: Crab+'s per-task crop (spec B.2), ``idx`` set for s4/ms3/ref_avs.
    """

    kind: str
    tot: int = 0
    idx: int | None = None
    pad_short: bool = False
    pad_to_second: bool = False


@dataclasses.dataclass(frozen=True)
class Record:
    """One sample, before any media is decoded.

    Attributes:
      family: ``"crab"`` (AV-UIE, quick start, pretraining) or ``"crab_plus"`` (AVUIE_2).
      task: task name (:data:`CRAB_TASKS`, :data:`PRETRAIN_TASKS`, :data:`CRAB_PLUS_TASKS`).
      mode: prompt family, ``"train"``, ``"test"`` or ``"quick_start"``.
      split: the split as the annotation names it (``train``, ``test``, ``val``, ``test_s`` ...).
      source: ``"<annotation file>#<entry index>"`` (relative to the data root), for messages.
      videos: video files, relative to the data root (two for Crab+ ``a2v``).
      num_frames: frames to sample uniformly from each video.
      frame_paths: a video given as a list of JPEG frames (S4/MS3/AVSS/Ref-AVS), in order.
      image_path: the still image (ARIG, QS/test AVS frame, pretraining image).
      audios: audio files (two for Crab+ ``v2a``).
      audio: how the audio is cut, or None when the sample has no audio.
      mask_path: ground-truth mask (binary PNG, or AVSBench colour PNG for ``avss``).
      frame_idx: the frame the sample is about (AVS / ARIG / Ref-AVS), else None.
      question: AVQA question / pretraining question, else None.
      answer: the target text without ``</s>``, or None when it lives in ``answer_file``
        (AVQA / AVE train) or is unknown (test and quick-start records).
      answer_file: text file holding the target, relative to the data root.
      gt: the test ground-truth string the original's evaluation stores, else None.
      fields: the other annotation fields the prompts need (``a_obj``, ``exp``, ``obj``,
        ``top_left`` ...); treat as read-only.
    """

    family: str
    task: str
    mode: str
    split: str
    source: str
    videos: tuple[str, ...] = ()
    num_frames: int = 0
    frame_paths: tuple[str, ...] = ()
    image_path: str | None = None
    audios: tuple[str, ...] = ()
    audio: AudioSpec | None = None
    mask_path: str | None = None
    frame_idx: int | None = None
    question: str | None = None
    answer: str | None = None
    answer_file: str | None = None
    gt: str | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def video_path(self) -> str | None:
        return self.videos[0] if self.videos else None

    @property
    def audio_path(self) -> str | None:
        return self.audios[0] if self.audios else None

    def media_paths(self) -> tuple[str, ...]:
        """Every media file the sample needs (relative to the data root)."""
        out = list(self.videos) + list(self.frame_paths) + list(self.audios)
        out += [p for p in (self.image_path, self.mask_path) if p]
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class CrabLayout:
    """Folder of each dataset under the data root (see the module docstring)."""

    avqa: str = "music_avqa"
    ave: str = "ave"
    avvp: str = "avvp"
    valor: str = "valor"
    avs: str = "avs"
    ref_avs: str = "ref_avs"
    llava: str = "video_llava"
    audiocaps: str = "audiocaps"
    lvis: str = "lvis"
    avuie2: str = "AVUIE_2"


@dataclasses.dataclass
class ReadResult:
    """Records of one annotation file and the entries that were skipped as bad."""

    records: list[Record]
    errors: list[BadRecordError]


# ----------------------------------------------------------------------------- helpers


def resolve(data_root: str | os.PathLike, rel_path: str) -> str:
    """Joins a record's relative media path to the data root (refuses ``..`` escapes)."""
    if os.path.isabs(rel_path) or ".." in rel_path.replace("\\", "/").split("/"):
        raise BadRecordError(rel_path, "media path must be relative to the data root, without '..'")
    return os.path.join(os.fspath(data_root), rel_path)


def rebase(value: str, keep: int) -> str:
    """A relative path as is; an absolute one cut to its last ``keep`` components."""
    value = value.replace("\\", "/")
    if not value.startswith("/"):
        return posixpath.normpath(value)
    parts = [p for p in value.split("/") if p]
    return "/".join(parts[-keep:])


def _join(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p])


def _frame_number(path: str) -> int:
    """``.../frames/3.jpg`` -> 3 (the original's ``int(basename[:-4])``)."""
    stem = posixpath.basename(path)[:-4]
    try:
        return int(stem)
    except ValueError:
        raise ValueError(f"frame file name {posixpath.basename(path)!r} is not '<number>.jpg'") from None


def _field(entry: Mapping[str, Any], name: str, where: str) -> Any:
    if not isinstance(entry, Mapping):
        raise BadRecordError(where, f"entry is a {type(entry).__name__}, expected a JSON object")
    if name not in entry or entry[name] is None:
        raise BadRecordError(where, f"missing field {name!r}")
    return entry[name]


def _frozen(d: Mapping[str, Any]) -> dict[str, Any]:
    # A plain dict (MappingProxyType does not pickle, and records travel to worker
    # processes); treat it as read-only.
    return dict(d)


def load_json_list(path: str | os.PathLike, shown: str | None = None) -> list:
    """Reads an annotation file that holds a JSON list; BadRecordError names the file."""
    shown = shown or os.fspath(path)
    if not os.path.isfile(path):
        raise BadRecordError(shown, "annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BadRecordError(shown, f"invalid or truncated JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise BadRecordError(shown, f"not UTF-8 text ({e.reason})") from e
    if not isinstance(data, list):
        raise BadRecordError(shown, f"expected a JSON list of records, found a {type(data).__name__}")
    return data


def load_answer(record: Record, data_root: str | os.PathLike) -> str:
    """The record's target text: ``record.answer`` or the content of ``answer_file``."""
    if record.answer is not None:
        return record.answer
    if record.answer_file is None:
        raise BadRecordError(record.source, f"{record.task} record in mode {record.mode!r} has no target text")
    path = resolve(data_root, record.answer_file)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise BadRecordError(record.answer_file, f"label file not found (for {record.source})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadRecordError(record.answer_file, f"cannot read label file ({e})") from e


def _collect(entries: Iterable[tuple[int, Any]], build: Callable[[int, Any], Sequence[Record]],
             strict: bool) -> ReadResult:
    """Runs ``build`` per entry; a BadRecordError (or a bad value) aborts or is collected."""
    records, errors = [], []
    for i, entry in entries:
        try:
            records.extend(build(i, entry))
        except BadRecordError as e:
            if strict:
                raise
            errors.append(e)
    return ReadResult(records, errors)


def _entry_error(where: str, e: Exception) -> BadRecordError:
    return BadRecordError(where, f"bad value ({type(e).__name__}: {e})")


def _guarded(where: str, fn: Callable[[], Sequence[Record]]) -> Sequence[Record]:
    try:
        return fn()
    except BadRecordError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise _entry_error(where, e) from e


# ------------------------------------------------------------------- Crab AV-UIE readers

_ANNOTATION = {  # task -> (layout field, train file, test file)
    "avqa": ("avqa", "valid_train_samples.json", "test_samples.json"),
    "ave": ("ave", "valid_train_samples.json", "test_samples.json"),
    "avvp": ("avvp", "train_samples.json", "test_samples.json"),
    "avcap": ("valor", "train_samples.json", "val_samples.json"),
    "arig": ("avs", "v1s_grounding_samples.json", "v1s_grounding_samples.json"),
    "s4": ("avs", "s4_samples.json", "s4_samples.json"),
    "ms3": ("avs", "ms3_samples.json", "ms3_samples.json"),
    "avss": ("avs", "avss_samples.json", "avss_samples.json"),
    "ref-avs": ("ref_avs", "metadata.csv", "metadata.csv"),
}


def annotation_path(task: str, mode: str, layout: CrabLayout = CrabLayout()) -> str:
    """The annotation file of a Crab task, relative to the data root."""
    folder, train, test = _ANNOTATION[task]
    return _join(getattr(layout, folder), train if mode == "train" else test)


def _av_clip(task, mode, split, where, root, vid, video_dir, audio_dir, video_ext=".mp4",
             audio_ext=".mp3", **kw) -> Record:
    return Record(family="crab", task=task, mode=mode, split=split, source=where,
                  videos=(_join(root, video_dir, vid + video_ext),), num_frames=VIDEO_FRAMES,
                  audios=(_join(root, audio_dir, vid + audio_ext),), audio=AudioSpec("clip", 10), **kw)


def _build_avqa(mode, root, where, e):
    qid = _field(e, "question_id", where)
    video = rebase(str(_field(e, "video_path", where)), 2)
    audio = rebase(str(_field(e, "audio_path", where)), 2)
    question = str(_field(e, "question", where))
    fields = {"video_id": e.get("video_id"), "question_id": qid, "type": e.get("type")}
    if mode == "train":
        kw = dict(answer_file=_join(root, "converted_label", f"{qid}.txt"))
    else:
        kw = dict(gt=str(_field(e, "answer", where)))
    return [Record(family="crab", task="avqa", mode=mode, split=mode, source=where,
                   videos=(_join(root, video),), num_frames=VIDEO_FRAMES, audios=(_join(root, audio),),
                   audio=AudioSpec("avqa", 60), question=question, fields=_frozen(fields), **kw)]


def _build_ave(mode, root, where, e):
    vid = str(_field(e, "vid", where))
    fields = {k: _field(e, k, where) for k in ("event", "start_time", "end_time")}
    if mode == "train":
        kw = dict(answer_file=_join(root, "converted_label", vid + ".txt"))
    else:
        kw = dict(gt=f"event:{fields['event']} start_time:{fields['start_time']} end_time:{fields['end_time']}")
    return [_av_clip("ave", mode, mode, where, root, vid, "AVE", "audio_data", fields=_frozen(fields), **kw)]


AVVP_TAG_RENAMES = (("<audio>", "<audio_event>"), ("</audio>", "</audio_event>"),
                    ("<visual>", "<visual_event>"), ("</visual>", "</visual_event>"))


def rename_avvp_tags(label: str) -> str:
    """AVVP targets: ``<audio>``/``<visual>`` tags renamed so they cannot hit the placeholder."""
    for old, new in AVVP_TAG_RENAMES:
        label = label.replace(old, new)
    return label


def _build_avvp(mode, root, where, e):
    vid = str(_field(e, "vid", where))
    event = _field(e, "event", where)
    if mode == "train":
        label = e.get("label") if isinstance(e, Mapping) else None
        if label is None:  # the original skips unlabelled training entries
            return []
        kw = dict(answer=rename_avvp_tags(str(label)))
    else:
        kw = dict(gt=str(event))
    return [_av_clip("avvp", mode, mode, where, root, vid, "llp_videos", "audio_data",
                     fields=_frozen({"event": event, "filename": e.get("filename")}), **kw)]


def _build_avcap(mode, root, where, e):
    video_id = str(_field(e, "video_id", where))
    desc = str(_field(e, "desc", where))
    kw = dict(answer=desc) if mode == "train" else dict(gt=desc)
    return [_av_clip("avcap", mode, "train" if mode == "train" else "val", where, root, video_id,
                     "video_data", "audio_data", **kw)]


def _build_arig(mode, root, where, e):
    split = str(_field(e, "split", where))
    if split != ("train" if mode == "train" else "test"):
        return []
    (x1, y1), (x2, y2) = _field(e, "top_left", where), _field(e, "bottom_right", where)
    if x1 == 1000:  # sentinel: no sounding object
        return []
    frame = rebase(str(_field(e, "frame_path", where)), 4)
    a_obj = str(_field(e, "a_obj", where))
    fields = {"a_obj": a_obj, "top_left": (x1, y1), "bottom_right": (x2, y2)}
    if mode == "train":
        kw = dict(answer=(f"The sounding object is {a_obj}. Its coordinate of top left corner is "
                          f"({x1},{y1}) and coordinate of bottom right corner is ({x2},{y2})"))
    else:
        kw = dict(gt=f"The sounding object is {a_obj}. Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>.")
    mask = e.get("mask_path")
    return [Record(family="crab", task="arig", mode=mode, split=split, source=where,
                   image_path=_join(root, frame), audios=(_join(root, rebase(str(_field(e, "audio_path", where)), 3)),),
                   audio=AudioSpec("clip", 5), mask_path=_join(root, rebase(str(mask), 4)) if mask else None,
                   frame_idx=_frame_number(frame), fields=_frozen(fields), **kw)]


def mask_tokens(n: int = 6) -> str:
    """``<mask_0>...<mask_{n-1}>`` (MASK6 of the spec)."""
    return "".join(f"<mask_{i}>" for i in range(n))


def segmentation_target(task: str, mode: str, a_obj: str, idx: int, exp: str = "", obj: str = "") -> str:
    """The target text of the AVS tasks (spec A.3.6-A.3.9), without ``</s>``."""
    masks = f"<mask_start>{mask_tokens()}<mask_end>"
    th = ORDINALS[idx]
    if task == "ref-avs":
        if mode == "test":
            return f"{exp} is {masks}"
        return f"At the {th} second in the video, {exp} is {obj}. Its mask is {masks}"
    if task == "avss" and mode == "test":
        return f"The category of the sound-making object and its mask image are {masks}"
    if task == "ms3" and mode == "test":  # quirk: every test frame says "third", and "in"
        return f"The object making the sound in the video is {a_obj}. The mask of the object that makes the sound in the third second is {masks}"
    return f"The object making the sound in the video is {a_obj}. The mask of the object that makes the sound at the {th} second is {masks}"


_AVS_SUBSETS = {"s4": ("v1s", 5, "labels_semantic"), "ms3": ("v1m", 5, "labels_semantic"),
                "avss": ("v2", 10, "labels_rgb")}


def _build_avs(task, mode, root, where, e, rng: random.Random):
    split = str(_field(e, "split", where))
    if split != ("train" if mode == "train" else "test"):
        return []
    uid = str(_field(e, "uid", where))
    a_obj = str(_field(e, "a_obj", where))
    subset, n, mask_dir = _AVS_SUBSETS[task]
    base = _join(root, subset, uid)
    frames = tuple(_join(base, "frames", f"{i}.jpg") for i in range(n))
    audio_path = (_join(base, "audio.wav"),)
    if mode == "train":
        # S4 trains on frame 0 only (only it has a mask), MS3 on each frame, AVSS on one frame
        # drawn once at construction.
        idxs = {"s4": [0], "ms3": list(range(n)), "avss": [rng.randint(0, n - 1)]}[task]
    else:
        idxs = list(range(n))
    out = []
    for i in idxs:
        target = segmentation_target(task, mode, a_obj, i)
        if task == "avss" and mode == "test":  # image + one 1-s segment (clip padded to 1 s)
            media = dict(audio=AudioSpec("frame", 10, i, pad_to_second=True))
        else:
            media = dict(frame_paths=frames, audio=AudioSpec("clip", n))
        kw = dict(answer=target) if mode == "train" else dict(gt=target)
        out.append(Record(family="crab", task=task, mode=mode, split=split, source=where,
                          image_path=frames[i], audios=audio_path, mask_path=_join(base, mask_dir, f"{i}.png"),
                          frame_idx=i, fields=_frozen({"a_obj": a_obj, "uid": uid, "vid": e.get("vid")}),
                          **media, **kw))
    return out


REF_AVS_SPLITS = ("train", "test_s", "test_u", "test_n")


def _build_ref_avs(mode, root, where, row, rng: random.Random, test_split: str):
    if not isinstance(row, (list, tuple)) or len(row) != 5:
        raise BadRecordError(where, f"expected 5 columns vid,uid,split,fid,exp, found {row!r}")
    _, uid, split, fid, exp = row
    if split != ("train" if mode == "train" else test_split):
        return []  # also drops the header row
    parts = uid.rsplit("_", 2)
    if len(parts) != 3:
        raise BadRecordError(where, f"uid {uid!r} is not '<vid>_<obj>_<n>'")
    vid, obj = parts[0], parts[1]
    frames = tuple(_join(root, "media", vid, "frames", f"{i}.jpg") for i in range(10))
    idxs = [rng.randint(0, 9)] if mode == "train" else list(range(10))
    out = []
    for i in idxs:
        target = segmentation_target("ref-avs", mode, "", i, exp=exp, obj=obj)
        kw = dict(answer=target) if mode == "train" else dict(gt=target)
        out.append(Record(family="crab", task="ref-avs", mode=mode, split=split, source=where,
                          frame_paths=frames, image_path=frames[i], audios=(_join(root, "media", vid, "audio.wav"),),
                          audio=AudioSpec("clip", 10), mask_path=_join(root, "gt_mask", vid, f"fid_{fid}", f"0000{i}.png"),
                          frame_idx=i, fields=_frozen({"exp": exp, "obj": obj, "uid": uid, "vid": vid, "fid": fid}),
                          **kw))
    return out


def _read_csv_rows(path: str, shown: str) -> list:
    if not os.path.isfile(path):
        raise BadRecordError(shown, "annotation file not found")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.reader(f))
    except (csv.Error, UnicodeDecodeError) as e:
        raise BadRecordError(shown, f"unreadable CSV ({e})") from e


def read_crab_task(task: str, mode: str, data_root: str | os.PathLike, *, layout: CrabLayout = CrabLayout(),
                   seed: int = 0, ref_avs_test_split: str = "test_s", strict: bool = True) -> ReadResult:
    """Reads one Crab fine-tuning task's annotations (spec A.3).

    Args:
      task: one of :data:`CRAB_TASKS`. mode: ``"train"`` or ``"test"``.
      seed: seeds the one-off random frame of AVSS / Ref-AVS training records (the original
        draws it unseeded at construction; here it is reproducible).
      ref_avs_test_split: ``test_s`` (seen), ``test_u`` (unseen) or ``test_n`` (null).
      strict: raise on the first bad entry; otherwise collect it in ``ReadResult.errors``.
    Raises:
      BadRecordError: missing / truncated annotation file (always), bad entry (strict).
    """
    if task not in CRAB_TASKS:
        raise ValueError(f"unknown Crab task {task!r}; known: {CRAB_TASKS}")
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test' for annotation files, got {mode!r}")
    if task == "ref-avs" and ref_avs_test_split not in REF_AVS_SPLITS[1:]:
        raise ValueError(f"ref_avs_test_split must be one of {REF_AVS_SPLITS[1:]}, got {ref_avs_test_split!r}")
    rel = annotation_path(task, mode, layout)
    root = getattr(layout, _ANNOTATION[task][0])
    path = os.path.join(os.fspath(data_root), rel)
    rng = random.Random(f"{seed}:{task}")
    if task == "ref-avs":
        rows = _read_csv_rows(path, rel)
        build = lambda i, r: _guarded(f"{rel}#{i}", lambda: _build_ref_avs(mode, root, f"{rel}#{i}", r, rng, ref_avs_test_split))
        return _collect(enumerate(rows), build, strict)
    entries = load_json_list(path, rel)
    if task in _AVS_SUBSETS:
        fn = lambda where, e: _build_avs(task, mode, root, where, e, rng)
    else:
        fn = {"avqa": _build_avqa, "ave": _build_ave, "avvp": _build_avvp, "avcap": _build_avcap,
              "arig": _build_arig}[task]
        fn = (lambda f: lambda where, e: f(mode, root, where, e))(fn)
    return _collect(enumerate(entries), lambda i, e: _guarded(f"{rel}#{i}", lambda: fn(f"{rel}#{i}", e)), strict)


# ---------------------------------------------------------------- quick-start requests


_QS_NEEDS = {"avqa": ("video_path", "audio_path", "question"), "ave": ("video_path", "audio_path"),
             "avvp": ("video_path", "audio_path"), "arig": ("image_path", "audio_path"),
             "s4": ("image_path", "audio_path"), "ms3": ("image_path", "audio_path"),
             "avss": ("image_path", "audio_path"), "ref-avs": ("image_path", "audio_path", "exp")}


def quick_start_record(request: Mapping[str, Any], source: str = "<request>") -> Record:
    """One quick-start request (the original's ``data/example.json`` entry) -> Record.

    Media: AV tasks take 10 video frames; image tasks the image plus one 1-s audio segment at
    the frame number in the image's file name (tot 5, or 10 for AVSS); Ref-AVS ten segments.
    """
    task = str(_field(request, "task", source)).lower()
    if task not in _QS_NEEDS:
        raise BadRecordError(source, f"quick start has no task {task!r}; known: {sorted(_QS_NEEDS)}")
    vals = {k: str(_field(request, k, source)) for k in _QS_NEEDS[task]}
    for k in ("video_path", "audio_path", "image_path", "mask_path"):
        if k in vals or request.get(k):
            v = str(request[k])
            if os.path.isabs(v):
                raise BadRecordError(source, f"{k} {v!r} must be relative to the data root")
            vals[k] = posixpath.normpath(v.replace("\\", "/"))
    common = dict(family="crab", task=task, mode="quick_start", split="quick_start", source=source,
                  audios=(vals["audio_path"],), mask_path=vals.get("mask_path"))
    if "video_path" in vals:
        rule = AudioSpec("avqa", 60) if task == "avqa" else AudioSpec("clip", 10)
        return Record(videos=(vals["video_path"],), num_frames=VIDEO_FRAMES, audio=rule,
                      question=vals.get("question"), **common)
    try:
        idx = _frame_number(vals["image_path"])
    except ValueError as e:
        if task != "ref-avs":
            raise BadRecordError(source, str(e)) from None
        idx = None
    if task == "ref-avs":
        rule = AudioSpec("clip", 10)
    else:
        rule = AudioSpec("frame", 10 if task == "avss" else 5, idx, pad_short=task == "arig")
    return Record(image_path=vals["image_path"], audio=rule, frame_idx=idx,
                  fields=_frozen({"exp": vals["exp"]} if "exp" in vals else {}), **common)


def read_quick_start(path: str | os.PathLike, *, strict: bool = True) -> ReadResult:
    """Reads a quick-start request list (``[{"task": ..., ...}]``)."""
    shown = os.fspath(path)
    entries = load_json_list(path, shown)
    return _collect(enumerate(entries), lambda i, e: [quick_start_record(e, f"{shown}#{i}")], strict)


# ---------------------------------------------------------------------- pretraining


def _with_period(text: str) -> str:
    return text if text[-1:] in (".", "!", "?") else text + "."


def _build_llava(kind, root, where, e):
    media = str(_field(e, kind, where))
    conv = _field(e, "conversations", where)
    if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(c, Mapping) and "value" in c for c in conv[:2]):
        raise BadRecordError(where, "field 'conversations' needs two turns with a 'value'")
    question = str(conv[0]["value"]).replace(f"<{kind}>", "").replace("\n", "")
    answer = str(conv[1]["value"])
    if not answer:
        raise BadRecordError(where, "empty answer turn")
    common = dict(family="crab", mode="train", split="train", source=where, question=question,
                  answer=_with_period(answer))
    if kind == "image":
        return [Record(task="image_caption", image_path=_join(root, rebase(media, 99)), **common)]
    return [Record(task="video_caption", videos=(_join(root, rebase(media, 99)),),
                   num_frames=PRETRAIN_VIDEO_FRAMES, **common)]


def _build_audiocaps(mode, root, where, e, skip_ids):
    cap_id = str(_field(e, "audiocap_id", where))
    if cap_id in skip_ids:
        return []
    caption = str(_field(e, "caption", where))
    kw = dict(answer=caption) if mode == "train" else dict(gt=caption)
    return [Record(family="crab", task="audio_caption", mode=mode, split=mode, source=where,
                   audios=(_join(root, "data", f"{cap_id}.wav"),), audio=AudioSpec("seconds"),
                   fields=_frozen({"start_time": e.get("start_time")}), **kw)]


def _build_lvis(root, where, e, min_area):
    if float(_field(e, "area", where)) < min_area:
        return []
    image_id, mid = int(_field(e, "image_id", where)), _field(e, "id", where)
    name, definition = str(_field(e, "name", where)), str(_field(e, "def", where))
    return [Record(family="crab", task="lvis_seg", mode="train", split="train", source=where,
                   image_path=_join(root, "train2017", f"{image_id:012d}.jpg"),
                   mask_path=_join(root, "binary_mask", f"{mid}.png"),
                   answer=f"It is <mask_start>{mask_tokens()}<mask_end>",
                   fields=_frozen({"name": name, "def": definition}))]


def read_pretrain_task(task: str, data_root: str | os.PathLike, *, mode: str = "train",
                       layout: CrabLayout = CrabLayout(), lvis_min_area: float = 1000.0,
                       strict: bool = True) -> ReadResult:
    """Reads one Crab pretraining set (spec A.4). AudioCaps trains on train.json + val.json
    (id ``'12347'`` of train.json skipped, as in the original) and tests on test.json."""
    if task not in PRETRAIN_TASKS:
        raise ValueError(f"unknown pretraining task {task!r}; known: {PRETRAIN_TASKS}")
    root_dir = os.fspath(data_root)
    if task in ("image_caption", "video_caption"):
        kind = "image" if task == "image_caption" else "video"
        rel = _join(layout.llava, "llava_image_.json" if kind == "image" else "valid_valley_.json")
        files = [(rel, lambda where, e, k=kind: _build_llava(k, layout.llava, where, e))]
    elif task == "audio_caption":
        names = [("train.json", {"12347"}), ("val.json", set())] if mode == "train" else [("test.json", set())]
        files = [(_join(layout.audiocaps, n), lambda where, e, s=s: _build_audiocaps(mode, layout.audiocaps, where, e, s))
                 for n, s in names]
    else:
        files = [(_join(layout.lvis, "train_samples.json"),
                  lambda where, e: _build_lvis(layout.lvis, where, e, lvis_min_area))]
    result = ReadResult([], [])
    for rel, fn in files:
        entries = load_json_list(os.path.join(root_dir, rel), rel)
        part = _collect(enumerate(entries), lambda i, e: _guarded(f"{rel}#{i}", lambda: fn(f"{rel}#{i}", e)), strict)
        result.records += part.records
        result.errors += part.errors
    return result


# -------------------------------------------------------------------- Crab+ AVUIE_2

# task -> (train target field, frames per video). Image tasks have frames 0.
CRAB_PLUS_TARGET = {
    "a2v": "label", "v2a": "label", "ks": "label", "ucf": "new_label", "meld": "label", "mer24": "label",
    "cremad": "label", "mafw": "label", "dfew": "label", "avqa": "label", "avqa_thu": "label",
    "ave": "label_content", "unav": "label_content", "avvp": "label_content", "avcap": "label_content",
    "s4": "label_content", "ms3": "label_content", "arig": "label_content", "ref_avs": "output",
}
CRAB_PLUS_IMAGE_TASKS = ("s4", "ms3", "ref_avs", "arig")
CRAB_PLUS_EMOTION_TASKS = ("meld", "mer24", "cremad", "mafw", "dfew")
CRAB_PLUS_TRAIN_ONLY = ("mer24", "unav", "avcap")
# Fields the prompt / GT of each task reads (besides media and target).
_CRAB_PLUS_FIELDS = {
    "a2v": ("correct_video",), "v2a": ("correct_audio",), "ks": ("action",), "ucf": ("label",),
    "meld": ("Emotion",), "mer24": (), "cremad": ("emotion",), "mafw": ("emotion",), "dfew": ("emotion",),
    "avqa": ("question", "answer"), "avqa_thu": ("question_text", "multi_choice", "answer"),
    "ave": ("event", "start_time", "end_time"), "unav": (), "avvp": ("event",), "avcap": (),
    "s4": ("a_obj",), "ms3": ("a_obj",), "arig": ("a_obj",), "ref_avs": (),
}


def _crab_plus_gt(task: str, f: Mapping[str, Any]) -> str | None:
    if task == "a2v":
        return f"<answer>{f['correct_video']}</answer>."
    if task == "v2a":
        return f"<answer>{f['correct_audio']}</answer>."
    if task == "ks":
        return f"<answer>{f['action']}</answer>"
    if task == "ucf":
        return f"<answer>{str(f['label']).lower()}</answer>"
    if task == "meld":
        return f"<answer>{f['Emotion']}</answer>."
    if task in ("cremad", "mafw", "dfew"):
        return f"<answer>{f['emotion']}</answer>."
    if task in ("avqa", "avqa_thu"):
        return str(f["answer"])
    if task == "ave":
        return f"event:{f['event']} start_time:{f['start_time']} end_time:{f['end_time']}"
    if task == "avvp":
        return str(f["event"])
    if task in ("s4", "ms3"):
        return f"The object making the sound in the video is {f['a_obj']}."
    if task == "ref_avs":
        return str(f["object"])
    if task == "arig":
        (x1, y1), (x2, y2) = f["top_left"], f["bottom_right"]
        return f"The sounding object is {f['a_obj']}. Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>."
    return None


def _build_crab_plus(task, mode, root, where, e):
    f = {k: _field(e, k, where) for k in _CRAB_PLUS_FIELDS[task]}
    if task in CRAB_PLUS_IMAGE_TASKS:
        image_key = "image_path" if mode == "train" else "visual_path"
        image = _join(root, rebase(str(_field(e, image_key, where)), 99))
        audio = (_join(root, rebase(str(_field(e, "audio_path", where)), 99)),)
        if task == "s4" and mode == "train":
            idx = 0  # the original fixes the audio segment of S4 training at 0
        elif task == "ref_avs" and mode == "train":
            idx = int(_field(e, "idx", where))
        elif task == "arig" and mode == "train":
            idx = _frame_number(image)
        else:
            idx = int(_field(e, "frame_idx", where))
        if task == "ref_avs":
            f["description" if mode == "train" else "object"] = str(
                _field(e, "description" if mode == "train" else "object", where))
            for k in ("vid", "uid", "fid", "split"):
                if k in e:
                    f[k] = e[k]
        if task == "arig" and mode == "test":
            f["top_left"], f["bottom_right"] = _field(e, "top_left", where), _field(e, "bottom_right", where)
        media = dict(image_path=image, audios=audio, frame_idx=idx, audio=AudioSpec("crab_plus", idx=idx))
    else:
        if task == "a2v":
            videos = tuple(_join(root, "video", str(_field(e, k, where))) for k in ("video1_path", "video2_path"))
            audios = (_join(root, "audio", str(_field(e, "audio_path", where))),)
        elif task == "v2a":
            videos = (_join(root, "video", str(_field(e, "video_path", where))),)
            audios = tuple(_join(root, "audio", str(_field(e, k, where))) for k in ("audio1_path", "audio2_path"))
        else:
            videos = (_join(root, "video", str(_field(e, "video_path", where))),)
            audios = (_join(root, "audio", str(_field(e, "audio_path", where))),)
        media = dict(videos=videos, audios=audios, audio=AudioSpec("crab_plus"),
                     num_frames=4 if task in CRAB_PLUS_EMOTION_TASKS else 10)
    if mode == "train":
        kw = dict(answer=str(_field(e, CRAB_PLUS_TARGET[task], where)))
    else:
        kw = dict(gt=_crab_plus_gt(task, f))
    question = f.get("question") or f.get("question_text")
    return [Record(family="crab_plus", task=task, mode=mode, split=str(e.get("split", mode)), source=where,
                   question=None if question is None else str(question), fields=_frozen(f), **media, **kw)]


def read_crab_plus_task(task: str, mode: str, data_root: str | os.PathLike, *,
                        layout: CrabLayout = CrabLayout(), strict: bool = True) -> ReadResult:
    """Reads ``<avuie2>/<task>/<mode>.json`` of Crab+ (spec B.3)."""
    if task not in CRAB_PLUS_TASKS:
        raise ValueError(f"unknown Crab+ task {task!r}; known: {CRAB_PLUS_TASKS}")
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if mode == "test" and task in CRAB_PLUS_TRAIN_ONLY:
        raise ValueError(f"Crab+ task {task!r} is train-only")
    root = _join(layout.avuie2, task)
    rel = _join(root, f"{mode}.json")
    entries = load_json_list(os.path.join(os.fspath(data_root), rel), rel)
    return _collect(enumerate(entries),
                    lambda i, e: _guarded(f"{rel}#{i}", lambda: _build_crab_plus(task, mode, root, f"{rel}#{i}", e)),
                    strict)
