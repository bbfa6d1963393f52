"""The typed :class:`Record` every annotation reader produces, and the plumbing they share.

Every media path in a :class:`Record` is **relative to the data root** (the config's
``data_root``); :func:`resolve` joins it. Nothing here opens a media file; the label text
files of AVQA / AVE are read lazily by :func:`load_answer`. Every problem with an
annotation file or one of its entries raises :class:`~crab_jax.data.errors.BadRecordError`
naming the file (``"<file>#<entry index>"`` for one entry) and the reason.

The folder of each dataset under the data root is a :class:`CrabLayout` field (so a config
can rename it); each reader module documents the files it reads there:
:mod:`~crab_jax.data.records.crab` (AV-UIE fine-tuning), :mod:`~crab_jax.data.records.pretrain`,
:mod:`~crab_jax.data.records.crab_plus` (``AVUIE_2``), :mod:`~crab_jax.data.records.quick_start`.

The original stores absolute paths of its authors' machines in some files (AVQA's
``video_path``, ARIG's ``frame_path`` ...). An absolute path is rebased (:func:`rebase`): its
last components (as many as the layout has below the task folder) are kept, relative to the
task folder.

Which prompt a record gets is decided by the model family from ``(family, task, mode)``;
``mode`` is ``"train"``, ``"test"`` or ``"quick_start"``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from crab_jax.data.errors import BadFileError, BadRecordError


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
      task: task name (``CRAB_TASKS``, ``PRETRAIN_TASKS``, ``CRAB_PLUS_TASKS`` of the readers).
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
    """Folder of each dataset under the data root (see the reader modules)."""

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
    synthetic_qa: str = "synthetic_qa"   # the synthetic dataset's short-answer QA tasks, one folder each


@dataclasses.dataclass
class ReadResult:
    """Records of one annotation file and the entries that were skipped as bad."""

    records: list[Record]
    errors: list[BadRecordError]


# ----------------------------------------------------------------------------- paths


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


def join_path(*parts: str) -> str:
    """POSIX join of the non-empty ``parts`` (record paths use ``/`` on every OS)."""
    return posixpath.join(*[p for p in parts if p])


def frame_number(path: str) -> int:
    """``.../frames/3.jpg`` -> 3 (the original's ``int(basename[:-4])``)."""
    stem = posixpath.basename(path)[:-4]
    try:
        return int(stem)
    except ValueError:
        raise ValueError(f"frame file name {posixpath.basename(path)!r} is not '<number>.jpg'") from None


# ----------------------------------------------------------------------------- files and entries


def entry_field(entry: Mapping[str, Any], name: str, where: str) -> Any:
    """``entry[name]``; BadRecordError at ``where`` when the entry is no object or lacks it."""
    if not isinstance(entry, Mapping):
        raise BadRecordError(where, f"entry is a {type(entry).__name__}, expected a JSON object")
    if name not in entry or entry[name] is None:
        raise BadRecordError(where, f"missing field {name!r}")
    return entry[name]


def frozen_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """The ``fields`` of a Record: a plain dict (MappingProxyType does not pickle, and records
    travel to worker processes); treat it as read-only."""
    return dict(d)


def complete_entries(text: str) -> int | None:
    """How many entries of the JSON list ``text`` parse before its first syntax error (None:
    ``text`` does not start a list); what a truncated annotation file still shows of itself."""
    decoder, ws = json.JSONDecoder(), re.compile(r"\s*")
    i = ws.match(text).end()
    if not text.startswith("[", i):
        return None
    i, n = i + 1, 0
    while True:
        try:
            _, i = decoder.raw_decode(text, ws.match(text, i).end())
        except json.JSONDecodeError:
            return n
        n += 1
        i = ws.match(text, i).end()
        if not text.startswith(",", i):
            return n
        i += 1


def load_json_list(path: str | os.PathLike, shown: str | None = None) -> list:
    """Reads an annotation file that holds a JSON list; :class:`BadFileError` names the file
    (and for a parse error the line, column and complete entries before it)."""
    shown = shown or os.fspath(path)
    if not os.path.isfile(path):
        raise BadFileError(shown, "annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise BadFileError(shown, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadFileError(shown, f"invalid or truncated JSON ({e.msg} at line {e.lineno} column {e.colno})",
                           line=e.lineno, column=e.colno, entries=complete_entries(text)) from e
    if not isinstance(data, list):
        raise BadFileError(shown, f"expected a JSON list of records, found a {type(data).__name__}")
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


def _guarded(where: str, build: Callable[[], Sequence[Record]]) -> Sequence[Record]:
    """``build()``; a bad value inside an entry (KeyError, TypeError ...) becomes a BadRecordError."""
    try:
        return build()
    except BadRecordError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise BadRecordError(where, f"bad value ({type(e).__name__}: {e})") from e


def read_entries(entries: Iterable[Any], shown: str, build: Callable[[str, Any], Sequence[Record]],
                 strict: bool) -> ReadResult:
    """Runs ``build(where, entry)`` per entry of the annotation file ``shown``
    (``where = "<shown>#<index>"``); a bad entry aborts (``strict``) or is collected."""
    records, errors = [], []
    for i, entry in enumerate(entries):
        where = f"{shown}#{i}"
        try:
            records.extend(_guarded(where, lambda: build(where, entry)))
        except BadRecordError as e:
            if strict:
                raise
            errors.append(e)
    return ReadResult(records, errors)
