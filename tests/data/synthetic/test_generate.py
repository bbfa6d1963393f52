"""Writing the synthetic dataset: determinism, the manifest, decodable media of the declared
sizes, the readers' layout, speed, the CLI and dataset reuse."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from crab_jax.data.media.audio import load_audio
from crab_jax.data.records.crab import read_crab_task
from crab_jax.data.records.record import load_answer
from crab_jax.data.synthetic import generate as gen
from crab_jax.data.synthetic import scenes
from crab_jax.data.synthetic.records import LAYOUT
from tests.data.synthetic.media_checks import (NUM_TEST, NUM_TRAIN, decode_any, decode_mp4, files_of,
                                               generate_small, read_image)


def test_same_seed_gives_identical_json_and_decoded_media(dataset, dataset_again):
    names = files_of(dataset)
    assert names == files_of(dataset_again)
    for name in names:
        a, b = dataset / name, dataset_again / name
        if a.suffix in (".json", ".txt"):
            assert a.read_bytes() == b.read_bytes(), f"{name} differs between two runs with seed 0"
        else:
            np.testing.assert_array_equal(decode_any(a), decode_any(b), err_msg=name)


def test_different_seed_gives_different_data(dataset, tmp_path):
    generate_small(tmp_path, 1, tasks=("ave", "s4"))
    for task in ("ave", "s4"):
        path = LAYOUT[task]["test"]
        assert (tmp_path / path).read_bytes() != (dataset / path).read_bytes(), path
    a = decode_any(dataset / "ave/AVE/ave-test-00000.mp4")
    b = decode_any(tmp_path / "ave/AVE/ave-test-00000.mp4")
    assert not np.array_equal(a, b)


def test_sample_i_does_not_depend_on_the_counts(dataset, tmp_path):
    generate_small(tmp_path, 0, num_train=1, num_test=3, tasks=("avqa", "arig"))
    for task in ("avqa", "arig"):
        small = gen.load_records(tmp_path, task, "test")
        big = gen.load_records(dataset, task, "test")
        assert len(small) == 3
        assert small == big[:3], task
    assert sorted(tmp_path.iterdir()) == sorted(tmp_path / n for n in ("AVUIE_2", "avs", "manifest.json", "music_avqa"))


def test_manifest_and_counts(dataset):
    m = json.loads((dataset / "manifest.json").read_text())
    assert m["seed"] == 0 and m["tasks"] == list(scenes.TASKS)
    assert [c["name"] for c in m["classes"]] == list(scenes.CLASS_NAMES)
    for task in scenes.TASKS:
        for split, n in (("train", NUM_TRAIN), ("test", NUM_TEST)):
            assert m["counts"][task][split]["records"] == n
            assert len(gen.load_records(dataset, task, split)) == n
    # distinct classes have distinct looks and sounds
    assert len({(c.shape, c.colour) for c in scenes.CLASSES}) == len({c.tone_hz for c in scenes.CLASSES}) == 6


def test_readers_read_every_task(dataset):
    """crab_jax.data.records.crab reads the output as a data root; every media file it names exists."""
    s4_frames = scenes.AVS_UNITS
    for task in scenes.TASKS:
        for mode, n in (("train", NUM_TRAIN), ("test", NUM_TEST)):
            result = read_crab_task(task, mode, dataset)
            assert not result.errors
            expected = n * s4_frames if (task == "s4" and mode == "test") else n
            assert len(result.records) == expected, (task, mode)
            for r in result.records:
                for p in r.media_paths():
                    assert (dataset / p).is_file(), p
                if mode == "train":
                    assert load_answer(r, dataset)


def test_media_decode_with_declared_sizes(dataset):
    size = scenes.FRAME_SIZE
    mp4s = sorted(dataset.rglob("*.mp4"))
    avqa_clips = -(-NUM_TRAIN // 2) + -(-NUM_TEST // 2)
    assert len(mp4s) == 2 * (NUM_TRAIN + NUM_TEST + avqa_clips)  # each clip in both layouts
    for path in mp4s:
        frames, duration = decode_mp4(path)
        seconds = scenes.AVQA_SECONDS if "avqa" in str(path) else scenes.AVE_UNITS * scenes.UNIT_SAMPLES / scenes.SAMPLE_RATE
        assert frames.shape == (10, size, size, 3), path
        assert duration == pytest.approx(seconds, abs=1e-6), path
    for path in sorted(dataset.rglob("*.wav")) + sorted(dataset.rglob("*.mp3")):
        audio = load_audio(path)
        if "avqa" in str(path):
            want = scenes.AVQA_SECONDS * scenes.SAMPLE_RATE
        elif path.suffix == ".mp3":
            want = scenes.AVE_UNITS * scenes.UNIT_SAMPLES
        else:
            want = scenes.AVS_UNITS * scenes.UNIT_SAMPLES
        assert audio.shape == (want,), path
        assert 0.1 < np.abs(audio).max() <= 1.0, path
    for path in sorted(dataset.rglob("*.jpg")):
        assert read_image(path).shape == (size, size, 3), path
    for path in sorted(dataset.rglob("*.png")):
        mask = read_image(path)
        assert mask.shape == (size, size) and set(np.unique(mask)) == {0, 255}, path


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    m = generate_small(tmp_path, 3, num_train=24, num_test=8)
    elapsed = time.perf_counter() - start
    clips = sum(c[s]["clips"] for c in m["counts"].values() for s in scenes.SPLITS)
    print(f"generated {clips} clips in {elapsed:.2f} s ({1000 * elapsed / clips:.1f} ms/clip)")
    assert elapsed / clips < 0.1  # the default 4 x 160 records: well under a minute on one core


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        gen.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--seed", "--num-train", "--num-test", "--tasks", "--overwrite"):
        assert flag in out


def test_cli_runs_and_protects_existing_folders(tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "crab_jax.data.synthetic", "--out", str(out), "--seed", "5",
           "--num-train", "2", "--num-test", "1", "--tasks", "s4,ave", "--quiet"]
    repo = pathlib.Path(gen.__file__).resolve().parents[3]  # run this checkout's module
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "s4: 2 train / 1 test" in done.stdout
    assert json.loads((out / "manifest.json").read_text())["tasks"] == ["ave", "s4"]
    assert gen.main(cmd[3:]) == 2  # not empty, no --overwrite
    assert gen.main(cmd[3:] + ["--overwrite"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert gen.main(["--out", str(foreign), "--overwrite", "--quiet", "--num-train", "1", "--num-test", "0"]) == 2
    assert (foreign / "keep.txt").exists()
    with pytest.raises(SystemExit):
        gen.main(["--out", str(out), "--tasks", "s4,nope"])


def test_ensure_dataset_reuses_a_matching_dataset(tmp_path):
    m1 = gen.ensure_dataset(tmp_path, 0, 1, 1, ("s4",), progress=False)
    stamp = (tmp_path / "manifest.json").stat().st_mtime_ns
    assert gen.ensure_dataset(tmp_path, 0, 1, 1, ("s4",), progress=False) == m1
    assert (tmp_path / "manifest.json").stat().st_mtime_ns == stamp
    m2 = gen.ensure_dataset(tmp_path, 0, 2, 1, ("s4",), progress=False)
    assert m2["counts"]["s4"]["train"]["records"] == 2
    # an interrupted generation (our folders, no manifest) is regenerated, not refused
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "ave").mkdir()
    assert gen.ensure_dataset(tmp_path, 0, 2, 1, ("s4",), progress=False) == m2
    assert not (tmp_path / "ave").exists()


def test_ensure_dataset_regenerates_an_older_format(tmp_path):
    """A dataset of format version 1 (no AVUIE_2 layout) with the same parameters is replaced."""
    gen.ensure_dataset(tmp_path, 0, 1, 1, ("s4",), progress=False)
    path = tmp_path / "manifest.json"
    old = {**json.loads(path.read_text()), "format_version": 1}
    path.write_text(json.dumps(old))
    shutil.rmtree(tmp_path / "AVUIE_2")
    m = gen.ensure_dataset(tmp_path, 0, 1, 1, ("s4",), progress=False)
    assert m["format_version"] == gen.FORMAT_VERSION != 1
    assert (tmp_path / "AVUIE_2" / "s4" / "test.json").is_file()


def test_cli_help_describes_both_layouts(capsys):
    with pytest.raises(SystemExit):
        gen.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for word in ("AVUIE_2", "OUT/AVUIE_2/<task>/{train,test}.json", "ks"):
        assert word in out, word
