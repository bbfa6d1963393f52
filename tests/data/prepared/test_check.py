"""Data checker: counts per task/split and each kind of unusable media, named by path."""

from __future__ import annotations

import collections
import dataclasses
import json
import wave

import numpy as np
import pytest

from crab_jax.cli import check as check_cli
from crab_jax.data.prepared import check as C
from crab_jax.data.records.select import read_records
from crab_jax.families.crab.examples import BEATS_PATCH
from tests.data.pipeline.crab_data import TASKS, make_dataset

CHECK = dict(read_records=read_records, min_fbank_frames=BEATS_PATCH)  # Crab's records and BEATs' patch


def _write_wav(path, samples: int, rate: int):
    data = (np.sin(np.arange(samples) * 0.05) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(data.tobytes())


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("check"), num_train=3)
    s4 = [r["uid"] for r in json.loads((root / "avs" / "s4_samples.json").read_text()) if r["split"] == "train"]
    arig = json.loads((root / "avs" / "v1s_grounding_samples.json").read_text())
    bad = {
        "missing": root / "ave" / "AVE" / "ave-train-00000.mp4",
        "empty": root / "avs" / "v1s" / s4[0] / "frames" / "3.jpg",
        "undecodable": sorted((root / "music_avqa" / "audio_data").iterdir())[0],
        "too_short": root / "avs" / "v1s" / s4[1] / "audio.wav",
        "wrong_rate": root / "avs" / arig[0]["audio_path"],
    }
    bad["missing"].unlink()
    bad["empty"].write_bytes(b"")
    bad["undecodable"].write_bytes(b"RIFF not really audio" * 10)
    _write_wav(bad["too_short"], 3000, 16000)
    _write_wav(bad["wrong_rate"], 8000, 8000)
    ann = root / "ave" / "valid_train_samples.json"
    ann.write_text(json.dumps(json.loads(ann.read_text()) + [{"vid": "x"}]))
    return root, bad


def test_counts_and_every_problem_kind_with_its_path(broken):
    root, bad = broken
    report = C.check_dataset(str(root), TASKS, **CHECK)
    assert report.counts["ave"] == {"train": 3, "test": 1} and report.counts["s4"]["train"] == 3
    for kind, path in bad.items():
        paths = [p for p, _ in report.problems[kind]]
        assert any(p.endswith(str(path.relative_to(root))) for p in paths), (kind, report.problems)
    assert any("valid_train_samples.json#3" in p for p, _ in report.problems["annotation"])
    assert "8000 Hz" in dict(report.problems["wrong_rate"])[str(bad["wrong_rate"])]
    text = report.format()
    assert "[too_short]" in text and str(bad["too_short"]) in text


def test_clean_data_has_no_problems(tmp_path):
    root = make_dataset(tmp_path, num_train=1)
    report = C.check_dataset(str(root), ("ave", "s4"), **CHECK)
    assert report.num_problems == 0, report.format()


def test_cli_exit_status_and_json(broken, tmp_path, capsys):
    root, bad = broken
    cfg = tmp_path / "cfg.py"
    cfg.write_text("from crab_jax.config import schema\n"
                   "def get_config():\n"
                   "    c = schema.get_config()\n"
                   "    c.data.path = ''\n"
                   "    c.data.tasks = ('ave', 's4')\n"
                   "    return c\n")
    out = tmp_path / "report.json"
    assert check_cli.main(["--config", str(cfg), "--data-root", str(root), "--json", str(out), "--quiet"]) == 1
    assert "records per task and split" in capsys.readouterr().out
    assert str(bad["missing"]) in out.read_text()


def test_a_bad_file_shared_by_two_records_is_listed_once_with_the_count(tmp_path):
    from crab_jax.data.errors import BadRecordError

    shared = str(tmp_path / "labels" / "shared.txt")
    other = str(tmp_path / "labels" / "other.txt")

    def read_shared(root, tasks, split):  # two records name one missing label file, a third another
        return [], [BadRecordError(shared, "label file not found"), BadRecordError(other, "label file not found"),
                    BadRecordError(shared, "label file not found")]

    report = C.check_dataset(str(tmp_path), ("ave",), ("train",), read_records=read_shared,
                             min_fbank_frames=BEATS_PATCH, decode_media=False)
    assert [p for p, _ in report.problems["annotation"]] == [shared, other]
    assert dict(report.problems["annotation"])[shared].endswith("(2 records)")
    assert report.format().count(shared) == 1 and report.num_problems == 2


def test_one_file_as_a_records_audio_and_video_is_checked_as_both(tmp_path):
    import fractions

    from crab_jax.data.records.record import Record
    from crab_jax.data.synthetic.writers import write_mp4

    clip = tmp_path / "clip.mp4"  # 3 frames, no audio stream: bad as audio AND too short as video
    write_mp4(clip, np.zeros((3, 32, 32, 3), np.uint8), fractions.Fraction(1))
    record = Record(family="crab", task="ave", mode="train", split="train", source="a.json#0",
                    videos=(clip.name,), num_frames=10, audios=(clip.name,))
    problems = collections.defaultdict(list)
    C.check_records([record, record], str(tmp_path), BEATS_PATCH, problems, set())
    assert [p for p, _ in problems["undecodable"]] == [str(clip)], dict(problems)  # no audio stream, once
    assert [p for p, _ in problems["too_short"]] == [str(clip)], dict(problems)    # 3 < 10 frames, once
    fewer = dataclasses.replace(record, num_frames=2)  # a record sampling fewer frames is fine
    problems = collections.defaultdict(list)
    C.check_records([fewer], str(tmp_path), BEATS_PATCH, problems, set())
    assert not problems["too_short"], dict(problems)
