"""``python -m crab_jax.data.check``: what a data root holds and what in it is unusable.

Reports the record count per task and split, then every problem with its path:

* ``annotation``: annotation file missing / unreadable, or an entry that cannot be read;
* ``missing``, ``empty`` (0 bytes), ``undecodable`` media files;
* ``wrong_rate``: audio whose native sample rate is not 16 kHz (Crab resamples it, so it
  still trains, but the data differs from the released AV-UIE files);
* ``too_short``: audio whose segments are shorter than the model's audio encoder reads
  (Crab: one BEATs patch, 16 fbank frames; the family's example builder says) under the
  record's own AudioSpec, or a video with fewer frames than the record samples.

Records are read by the config's model family (``model.family``). Each media file is checked
once, however many records use it, and a problem reported by several records (a label file two
records share) is listed once with the count. Exit status 1 when any problem is found.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

import av
from tqdm import tqdm

from crab_jax.data.errors import BadRecordError
from crab_jax.data.media import decode as M
from crab_jax.data.media.fbank import DEFAULT_FBANK
from crab_jax.data.records.record import Record, resolve

TARGET_RATE = 16000
CATEGORIES = ("annotation", "missing", "empty", "undecodable", "wrong_rate", "too_short")


def _category(e: BadRecordError) -> str:
    r = e.reason.lower()
    if "not found" in r:
        return "missing"
    if "0 bytes" in r or "empty" in r:
        return "empty"
    if "too short" in r or "at least" in r or "truncated" in r:
        return "too_short"
    return "undecodable"


def native_audio_rate(path: str) -> int:
    """Sample rate of the file's first audio stream (container header, no decoding)."""
    with av.open(path) as c:
        if not c.streams.audio:
            raise BadRecordError(path, "no audio stream")
        return int(c.streams.audio[0].sample_rate)


def check_audio(record: Record, path: str, min_fbank_frames: int, problems: dict, checked: set) -> None:
    """Decodability and sample rate of the audio file ``path``; for Crab's segment rules also
    the segment length (Crab+'s crops pad every clip to >= 1 s: never too short)."""
    if ("audio", path) not in checked:  # keyed by kind: one mp4 can be a record's audio and video
        checked.add(("audio", path))
        try:
            M.check_file(path, "audio")
            rate = native_audio_rate(path)
            if rate != TARGET_RATE:
                problems["wrong_rate"].append((path, f"{rate} Hz, expected {TARGET_RATE} Hz (resampled on load)"))
        except BadRecordError as e:
            problems[_category(e)].append((e.path, e.reason))
            return
        except Exception as e:  # av errors
            problems["undecodable"].append((path, f"cannot open audio ({type(e).__name__}: {e})"))
            return
    if record.audio is None or record.audio.kind not in M.SEGMENT_KINDS:
        return
    key = (path, record.audio)
    if key in checked:
        return
    checked.add(key)
    try:
        seg = M.audio_segments(record.audio, M.decode_audio(path))
    except BadRecordError as e:
        if (path, "decoded") not in checked:
            problems[_category(e)].append((e.path, e.reason))
        checked.add((path, "decoded"))
        return
    frames = DEFAULT_FBANK.num_frames(int(seg.waveforms.shape[1]))
    if frames < min_fbank_frames:
        problems["too_short"].append((path, f"{seg.waveforms.shape[1]}-sample segments ({frames} fbank frames) "
                                            f"for {record.task}'s rule {record.audio}; the model needs "
                                            f"{min_fbank_frames}"))


def check_video(record: Record, path: str, problems: dict, checked: set) -> None:
    """Decodability of the video ``path`` and enough frames for the record's sampling (checked
    again for a record that samples a different number of frames)."""
    need = max(record.num_frames, M.MIN_VIDEO_FRAMES)
    if ("video", path, need) in checked:
        return
    checked.add(("video", path, need))
    try:
        M.check_file(path, "video")
        with av.open(path) as c:
            if not c.streams.video:
                raise BadRecordError(path, "no video stream")
            vlen = M.count_frames(c, c.streams.video[0])
    except BadRecordError as e:
        problems[_category(e)].append((e.path, e.reason))
        return
    except Exception as e:
        problems["undecodable"].append((path, f"cannot open video ({type(e).__name__}: {e})"))
        return
    if vlen < need:
        problems["too_short"].append((path, f"{vlen} frame(s), the record samples {record.num_frames}"))


def check_image(path: str, what: str, problems: dict, checked: set) -> None:
    if (what, path) in checked:
        return
    checked.add((what, path))
    try:
        M._open_image(path, what)
    except BadRecordError as e:
        problems[_category(e)].append((e.path, e.reason))


def check_records(records: Sequence[Record], data_root: str, min_fbank_frames: int, problems: dict,
                  checked: set) -> None:
    """Adds the problems of the records' media files (each file once) to ``problems``."""
    for r in records:
        for audio in r.audios:  # every file of a pair too (Crab+ v2a / a2v)
            check_audio(r, resolve(data_root, audio), min_fbank_frames, problems, checked)
        for video in r.videos:
            check_video(r, resolve(data_root, video), problems, checked)
        for p in r.frame_paths + ((r.image_path,) if r.image_path else ()):
            check_image(resolve(data_root, p), "image", problems, checked)
        if r.mask_path:
            check_image(resolve(data_root, r.mask_path), "mask", problems, checked)


@dataclasses.dataclass
class CheckReport:
    """Counts per ``task -> split -> records`` and problems per category: ``[(path, reason)]``."""

    counts: dict
    problems: dict

    @property
    def num_problems(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def to_json(self) -> dict:
        return {"counts": self.counts, "problems": {k: [{"path": p, "reason": r} for p, r in v]
                                                      for k, v in self.problems.items() if v}}

    def format(self) -> str:
        lines = ["records per task and split:"]
        for task, splits in self.counts.items():
            lines.append(f"  {task:14s} " + "  ".join(f"{s}: {n}" for s, n in splits.items()))
        lines.append(f"problems: {self.num_problems}")
        for k in CATEGORIES:
            for p, r in self.problems.get(k, []):
                lines.append(f"  [{k}] {p}: {r}")
        return "\n".join(lines)


def check_dataset(data_root: str, tasks: Sequence[str], splits: Sequence[str] = ("train", "test"), *,
                  read_records: Callable[..., tuple[list, list]], min_fbank_frames: int,
                  decode_media: bool = True, progress: bool = False) -> CheckReport:
    """Reads every annotation of ``tasks`` x ``splits`` and checks the media they name.

    Args:
      read_records: the family's ``(root, tasks, split) -> (records, bad-record errors)``.
      min_fbank_frames: fewest fbank frames per audio segment the model reads.
    """
    counts: dict = {}
    problems = collections.defaultdict(list)
    checked: set = set()
    for task in tqdm(tasks, desc="checking tasks", disable=not progress):
        counts[task] = {}
        for split in splits:
            records, errors = read_records(data_root, (task,), split)
            counts[task][split] = len(records)
            problems["annotation"] += [(e.path, e.reason) for e in errors]
            if decode_media:
                check_records(records, data_root, min_fbank_frames, problems, checked)
    return CheckReport(counts, {k: merge_repeats(problems.get(k, [])) for k in CATEGORIES})


def merge_repeats(problems: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``[(path, reason)]`` with each repeated pair once, in first-seen order, its reason ending in
    ``(N records)`` when N > 1 records reported it."""
    times = collections.Counter(problems)
    return [(p, r if times[(p, r)] == 1 else f"{r} ({times[(p, r)]} records)") for p, r in dict.fromkeys(problems)]
