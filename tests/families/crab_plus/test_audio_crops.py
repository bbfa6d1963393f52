"""Crab+'s audio loading + per-task crops vs the original's waveforms, and each rule on
synthetic clips (spec B.2's table, the original's ``process_audio_by_task``)."""

from __future__ import annotations

import numpy as np
import pytest

from crab_jax.data.media.whisper_features import SAMPLE_RATE as SR
from crab_jax.families.crab_plus import audio_crops as ac
from tests.data.media.beats_fixtures import media_root

# Spec B.2's groups, written out here so the test does not read the module's own lists.
TOT10_TASKS = ("avqa_thu", "ks", "ucf", "avvp", "ave", "a2v", "v2a", "unav", "avcap")
EMOTION_TASKS = ("mer24", "meld", "dfew", "mafw", "cremad")


def ramp(n: int) -> np.ndarray:
    """``[n]`` float32 1, 2, ..., n: every sample is identifiable and none is 0 (= padding)."""
    return np.arange(1, n + 1, dtype=np.float32)


def media_path(media, avuie_path: str):
    """``AVUIE_2/<task>/<folder>/<file>`` -> ``<media>/<task>/<file>`` (fixture README)."""
    parts = avuie_path.split("/")
    assert parts[0] == "AVUIE_2", avuie_path
    return media / parts[1] / parts[-1]


def test_fixture_waveforms_from_the_real_media(crab_plus_fixtures_dir, crab_plus_manifest):
    entry = crab_plus_manifest["fixtures"]["thinker_av"]["config"]
    arrays = np.load(crab_plus_fixtures_dir / "thinker_av" / "thinker_av.npz")
    media = media_root(crab_plus_fixtures_dir)
    checked = 0
    for i, (conv, decoded) in enumerate(zip(entry["conversations"], entry["media_decode"])):
        items = [c for m in conv if isinstance(m["content"], list) for c in m["content"] if c["type"] == "audio"]
        assert len(items) == len(decoded["audios"])
        for j, (item, info) in enumerate(zip(items, decoded["audios"])):
            ours = ac.load_task_audio(media_path(media, item["audio"]), item.get("task"), item.get("idx"))
            ref = arrays[f"s{i}_audio{j}_waveform"]
            assert ours.dtype == np.float32 and ours.shape == ref.shape == (info["samples"],)
            err = float(np.abs(ours - ref).max())
            print(f"crop {item['task']} {item['audio']}: {ours.shape[0]} samples, max abs err {err:.3e}")
            np.testing.assert_array_equal(ours, ref)
            checked += 1
    assert checked >= 2


def test_clips_under_one_second_are_padded_first():
    np.testing.assert_array_equal(ac.pad_to_one_second(ramp(1000)), np.r_[ramp(1000), np.zeros(SR - 1000)])
    np.testing.assert_array_equal(ac.pad_to_one_second(ramp(SR + 3)), ramp(SR + 3))
    # No task: only the padding (the original's item without a "task" key).
    np.testing.assert_array_equal(ac.crop_audio(ramp(10), None), np.r_[ramp(10), np.zeros(SR - 10)])
    # The padding comes before nps is computed: a 0.5-s clip with tot=10 gives nps = 1600.
    np.testing.assert_array_equal(ac.crop_audio(ramp(SR // 2), "ave"), np.r_[ramp(SR // 2), np.zeros(SR // 2)])


@pytest.mark.parametrize("task", TOT10_TASKS)
def test_tot10_tasks_keep_ten_equal_parts(task):
    n = 10 * 1603 + 9                      # nps = 1603: the last 9 samples are dropped
    np.testing.assert_array_equal(ac.crop_audio(ramp(n), task), ramp(10 * 1603))


def test_arig_keeps_five_equal_parts():
    n = 5 * 3301 + 4
    np.testing.assert_array_equal(ac.crop_audio(ramp(n), "arig"), ramp(5 * 3301))


@pytest.mark.parametrize("task", EMOTION_TASKS)
def test_emotion_tasks_take_the_first_four_seconds(task):
    long = ramp(6 * SR + 5)
    np.testing.assert_array_equal(ac.crop_audio(long, task), ramp(4 * SR))
    short = ramp(int(2.5 * SR))            # each missing second (and the half) zero-padded
    np.testing.assert_array_equal(ac.crop_audio(short, task), np.r_[short, np.zeros(int(1.5 * SR))])
    exact = ramp(4 * SR)
    np.testing.assert_array_equal(ac.crop_audio(exact, task), exact)
    tiny = ramp(100)                       # padded to 1 s, then to 4 s
    np.testing.assert_array_equal(ac.crop_audio(tiny, task), np.r_[tiny, np.zeros(4 * SR - 100)])


@pytest.mark.parametrize("task,tot", [("s4", 5), ("ms3", 5), ("ref_avs", 10)])
def test_one_segment_at_idx(task, tot):
    nps = 3203
    a = ramp(tot * nps + 2)
    for idx in (0, 2, tot - 1):            # tot - 1: the last segment
        np.testing.assert_array_equal(ac.crop_audio(a, task, idx), a[idx * nps:(idx + 1) * nps])
    np.testing.assert_array_equal(ac.crop_audio(a, task), a[:nps])          # idx defaults to 0
    np.testing.assert_array_equal(ac.crop_audio(a, task, tot), np.zeros(nps))  # past the end: silence
    # A 0.55-s clip: padded to 1 s, nps = 16000 // tot; the segment holding the clip's last
    # sample straddles the padding.
    short = ramp(int(0.55 * SR))
    nps = SR // tot
    idx = (short.shape[0] - 1) // nps
    want = np.zeros(nps, np.float32)
    real = short.shape[0] - idx * nps
    assert 0 < real < nps
    want[:real] = short[idx * nps:]
    np.testing.assert_array_equal(ac.crop_audio(short, task, idx), want)


def test_avqa_windows():
    nps = 1601                             # odd: the half-unit window edges truncate
    a = ramp(60 * nps + 17)
    out = ac.crop_audio(a, "avqa")
    assert out.shape == (10 * 2 * nps,)
    windows = out.reshape(10, 2 * nps)
    # Centre 0: [0, 1.5 nps) front-padded to 2 nps.
    head = int(1.5 * nps)
    np.testing.assert_array_equal(windows[0], np.r_[np.zeros(2 * nps - head), a[:head]])
    for k, c in enumerate(range(6, 60, 6), start=1):
        start = int((c - 0.5) * nps)
        np.testing.assert_array_equal(windows[k], a[start:start + 2 * nps], err_msg=f"centre {c}")
    # A clip shorter than one window (0.3 s, padded to 1 s): nps = 266, still 10 windows.
    short = ac.crop_audio(ramp(int(0.3 * SR)), "avqa")
    assert short.shape == (10 * 2 * (SR // 60),)


def test_v2a_concatenates_the_two_crops():
    a, b = ac.crop_audio(ramp(10 * 1700), "v2a"), ac.crop_audio(-ramp(10 * 1900 + 3), "v2a")
    both = ac.concat_audios(a, b)
    assert both.dtype == np.float32 and both.shape == (a.shape[0] + b.shape[0],)
    np.testing.assert_array_equal(both, np.r_[a, b])
    with pytest.raises(ValueError):
        ac.concat_audios()


def test_every_crab_plus_task_has_a_rule_and_typos_fail():
    from crab_jax.data.records.crab_plus import CRAB_PLUS_TASKS
    spec = set(TOT10_TASKS) | set(EMOTION_TASKS) | {"avqa", "arig", "s4", "ms3", "ref_avs"}
    assert set(CRAB_PLUS_TASKS) == spec
    with pytest.raises(ValueError, match="ref-avs"):
        ac.crop_audio(ramp(SR), "ref-avs")
