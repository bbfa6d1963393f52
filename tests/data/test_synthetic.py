"""The synthetic audio-visual dataset: determinism, decodable media of the declared sizes,
answers that follow from the media (an oracle reading only the files scores ~1 while the
media-blind chance level stays far below), the readers' layout, the metrics and the CLI."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from crab_jax.data.records import readers as rec
from crab_jax.data.synthetic import generate as syn
from crab_jax.data.synthetic import metrics as sm
from crab_jax.data.media.audio import load_audio

NUM_TRAIN, NUM_TEST = 3, 12


def _generate(root: pathlib.Path, seed: int, **kw) -> dict:
    kw.setdefault("num_train", NUM_TRAIN)
    kw.setdefault("num_test", NUM_TEST)
    return syn.generate(root, seed, progress=False, **kw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("synthetic_seed0")
    _generate(root, 0)
    return root


@pytest.fixture(scope="module")
def dataset_again(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("synthetic_seed0_again")
    _generate(root, 0)
    return root


# ----------------------------------------------------------------------------- decoding helpers


def decode_mp4(path: pathlib.Path) -> tuple[np.ndarray, float]:
    """All frames ``[T, H, W, 3]`` uint8 and the stream duration in seconds."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
        duration = float(stream.duration * stream.time_base)
    return frames, duration


def read_image(path: pathlib.Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def decode_any(path: pathlib.Path) -> np.ndarray:
    suffix = path.suffix
    if suffix == ".mp4":
        return decode_mp4(path)[0]
    if suffix in (".wav", ".mp3"):
        return load_audio(path)
    if suffix in (".jpg", ".png"):
        return read_image(path)
    return np.frombuffer(path.read_bytes(), np.uint8)


def files_of(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def colour_mask(frame: np.ndarray, cls: syn.ObjectClass, tol: int = 60) -> np.ndarray:
    """Pixels whose colour is within ``tol`` (every channel) of the class colour."""
    return (np.abs(frame.astype(np.int32) - np.array(cls.colour)) <= tol).all(-1)


def present_classes(frame: np.ndarray, min_pixels: int = 10) -> dict[int, np.ndarray]:
    """class index -> its pixel mask, for the classes visible in ``frame``."""
    out = {}
    for k, cls in enumerate(syn.CLASSES):
        m = colour_mask(frame, cls)
        if m.sum() >= min_pixels:
            out[k] = m
    return out


def tone_class(audio: np.ndarray) -> int:
    """Class whose tone frequency is nearest the spectrum's peak."""
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak = np.fft.rfftfreq(len(audio), 1 / syn.SAMPLE_RATE)[int(np.argmax(spec))]
    return int(np.argmin([abs(np.log(peak / c.tone_hz)) for c in syn.CLASSES]))


def loud_units(audio: np.ndarray, units: int) -> np.ndarray:
    n = len(audio) // units
    rms = np.sqrt((audio[: n * units].reshape(units, n) ** 2).mean(1))
    return rms > 0.05


# ----------------------------------------------------------------------------- determinism


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
    _generate(tmp_path, 1, tasks=("ave", "s4"))
    for task in ("ave", "s4"):
        path = syn.LAYOUT[task]["test"]
        assert (tmp_path / path).read_bytes() != (dataset / path).read_bytes(), path
    a = decode_any(dataset / "ave/AVE/ave-test-00000.mp4")
    b = decode_any(tmp_path / "ave/AVE/ave-test-00000.mp4")
    assert not np.array_equal(a, b)


def test_sample_i_does_not_depend_on_the_counts(dataset, tmp_path):
    _generate(tmp_path, 0, num_train=1, num_test=3, tasks=("avqa", "arig"))
    for task in ("avqa", "arig"):
        small = syn.load_records(tmp_path, task, "test")
        big = syn.load_records(dataset, task, "test")
        assert len(small) == 3
        assert small == big[:3], task
    assert sorted(tmp_path.iterdir()) == sorted(tmp_path / n for n in ("avs", "manifest.json", "music_avqa"))


# ----------------------------------------------------------------------------- layout and media


def test_manifest_and_counts(dataset):
    m = json.loads((dataset / "manifest.json").read_text())
    assert m["seed"] == 0 and m["tasks"] == list(syn.TASKS)
    assert [c["name"] for c in m["classes"]] == list(syn.CLASS_NAMES)
    for task in syn.TASKS:
        for split, n in (("train", NUM_TRAIN), ("test", NUM_TEST)):
            assert m["counts"][task][split]["records"] == n
            assert len(syn.load_records(dataset, task, split)) == n
    # distinct classes have distinct looks and sounds
    assert len({(c.shape, c.colour) for c in syn.CLASSES}) == len({c.tone_hz for c in syn.CLASSES}) == 6


def test_readers_read_every_task(dataset):
    """crab_jax.data.records.readers reads the output as a data root; every media file it names exists."""
    s4_frames = syn.AVS_UNITS
    for task in syn.TASKS:
        for mode, n in (("train", NUM_TRAIN), ("test", NUM_TEST)):
            result = rec.read_crab_task(task, mode, dataset)
            assert not result.errors
            expected = n * s4_frames if (task == "s4" and mode == "test") else n
            assert len(result.records) == expected, (task, mode)
            for r in result.records:
                for p in r.media_paths():
                    assert (dataset / p).is_file(), p
                if mode == "train":
                    assert rec.load_answer(r, dataset)


def test_media_decode_with_declared_sizes(dataset):
    size = syn.FRAME_SIZE
    mp4s = sorted(dataset.rglob("*.mp4"))
    avqa_clips = -(-NUM_TRAIN // 2) + -(-NUM_TEST // 2)
    assert len(mp4s) == NUM_TRAIN + NUM_TEST + avqa_clips
    for path in mp4s:
        frames, duration = decode_mp4(path)
        seconds = syn.AVQA_SECONDS if "music_avqa" in str(path) else syn.AVE_UNITS * syn.UNIT_SAMPLES / syn.SAMPLE_RATE
        assert frames.shape == (10, size, size, 3), path
        assert duration == pytest.approx(seconds, abs=1e-6), path
    for path in sorted(dataset.rglob("*.wav")) + sorted(dataset.rglob("*.mp3")):
        audio = load_audio(path)
        if "music_avqa" in str(path):
            want = syn.AVQA_SECONDS * syn.SAMPLE_RATE
        elif path.suffix == ".mp3":
            want = syn.AVE_UNITS * syn.UNIT_SAMPLES
        else:
            want = syn.AVS_UNITS * syn.UNIT_SAMPLES
        assert audio.shape == (want,), path
        assert 0.1 < np.abs(audio).max() <= 1.0, path
    for path in sorted(dataset.rglob("*.jpg")):
        assert read_image(path).shape == (size, size, 3), path
    for path in sorted(dataset.rglob("*.png")):
        mask = read_image(path)
        assert mask.shape == (size, size) and set(np.unique(mask)) == {0, 255}, path


def test_in_memory_render_matches_the_files(dataset):
    s = syn.sample_avs("s4", 0, "test", 1)
    frames, masks = syn.render_frames(s.clip)
    base = dataset / "avs" / "v1s" / s.uid
    for i in range(syn.AVS_UNITS):
        np.testing.assert_array_equal(read_image(base / "labels_semantic" / f"{i}.png") > 0, masks[i])
        assert np.abs(read_image(base / "frames" / f"{i}.jpg").astype(int) - frames[i]).mean() < 4
    wav = load_audio(base / "audio.wav")
    np.testing.assert_allclose(wav, syn.render_audio(s.clip), atol=1 / 32767 + 1e-6)


def test_class_tones_are_distinct_in_the_model_fbank():
    """Each class's tone peaks in its own mel bin of the BEATs filterbank the model sees."""
    from crab_jax.data.media.fbank import beats_fbank

    peaks = []
    for k in range(len(syn.CLASSES)):
        s = syn.sample_avs("s4", 0, "train", 0)
        clip = dataclasses.replace(s.clip, tracks=(dataclasses.replace(s.clip.tracks[0], cls=k),), sounding=0)
        fb = beats_fbank(syn.render_audio(clip)[: syn.UNIT_SAMPLES])
        assert fb.shape == (1 + (syn.UNIT_SAMPLES - 400) // 160, 128)
        peaks.append(int(np.argmax(fb.mean(0))))
    assert peaks == sorted(peaks) and min(np.diff(peaks)) >= 4, peaks


# ----------------------------------------------------------------------------- answers follow from the media


def oracle_avqa(r: rec.Record, root: pathlib.Path) -> str:
    frames, _ = decode_mp4(root / r.video_path)
    sounding = tone_class(load_audio(root / r.audio_path))
    present = present_classes(frames[0])
    assert sounding in present, "the sounding object must be visible"
    q = r.question
    if q == syn.AVQA_QUESTIONS["which"][0]:
        answer = syn.CLASSES[sounding].name
    elif q == syn.AVQA_QUESTIONS["where"][0]:
        answer = "left" if np.nonzero(present[sounding])[1].mean() < syn.FRAME_SIZE / 2 else "right"
    elif q == syn.AVQA_QUESTIONS["count"][0]:
        answer = syn.COUNT_WORDS[len(present)]
    else:
        name = re.fullmatch(r"Is the (.*) making the sound\?", q).group(1)
        answer = "yes" if name == syn.CLASSES[sounding].name else "no"
    return f"So the answer is <answer> {answer} </answer>."


def oracle_ave(r: rec.Record, root: pathlib.Path) -> str:
    frames, _ = decode_mp4(root / r.video_path)
    audio = load_audio(root / r.audio_path)
    loud = loud_units(audio, syn.AVE_UNITS)
    cls = tone_class(audio[np.repeat(loud, len(audio) // syn.AVE_UNITS)])
    visible = np.array([cls in present_classes(f) for f in frames])
    seen = [set(present_classes(f)) for f in frames]
    assert len(set.union(*seen)) == 2 and set.intersection(*seen), "a silent distractor is always on screen"
    event = np.nonzero(loud & visible)[0]
    return (f"<event> {syn.CLASSES[cls].name} </event>, and the time range is "
            f"<range> {event.min()},{event.max() + 1} </range>.")


def oracle_sounding_pixels(r: rec.Record, root: pathlib.Path) -> np.ndarray:
    frame = read_image(root / r.image_path)
    assert len(present_classes(frame)) == 2, "two objects on screen: the frame alone is ambiguous"
    return colour_mask(frame, syn.CLASSES[tone_class(load_audio(root / r.audio_path))])


@pytest.mark.parametrize("task", ["avqa", "ave", "arig", "s4", "s4_category"])
def test_an_oracle_reading_the_media_beats_chance(dataset, task):
    """Answers follow from audio + frames: reading only the files scores ~1, far above chance."""
    reader_task = "s4" if task.startswith("s4") else task
    records = rec.read_crab_task(reader_task, "test", dataset).records
    scores = []
    for r in records:
        if task == "avqa":
            scores.append(sm.score(task, oracle_avqa(r, dataset), r))
        elif task == "ave":
            scores.append(sm.score(task, oracle_ave(r, dataset), r))
        elif task == "arig":
            (x1, y1), (x2, y2) = syn.mask_box(oracle_sounding_pixels(r, dataset))
            scores.append(sm.score(task, f"Its coordinates are <obj>({x1},{y1})({x2},{y2})</obj>.", r))
        elif task == "s4":
            gt = read_image(dataset / r.mask_path) > 0
            scores.append(sm.score(task, oracle_sounding_pixels(r, dataset), r, gt_mask=gt))
        else:
            name = syn.CLASSES[tone_class(load_audio(dataset / r.audio_path))].name
            scores.append(sm.score(task, f"The object making the sound in the video is {name}.", r))
    floor = {"s4": 0.95, "arig": 0.95}.get(task, 1.0)  # JPEG: a stray edge pixel at most
    assert min(scores) >= floor - 1e-9, (task, scores)
    assert np.mean(scores) > sm.chance_level(task) + 0.3


def test_answers_match_the_scene_description(dataset):
    """The JSON answer equals what the in-memory scene says (class of the tone, box of the mask)."""
    for i in range(NUM_TEST):
        a = syn.sample_ave(0, "test", i)
        row = syn.load_records(dataset, "ave", "test")[i]
        assert row["event"] == a.clip.sounding_class.name
        lo, hi = a.clip.tone_span
        assert lo // syn.UNIT_SAMPLES <= row["start_time"] < row["end_time"] <= hi // syn.UNIT_SAMPLES
        assert row["end_time"] - row["start_time"] >= syn.AVE_MIN_EVENT_UNITS
        g = syn.sample_avs("arig", 0, "test", i)
        row = syn.load_records(dataset, "arig", "test")[i]
        _, masks = syn.render_frames(g.clip)
        ys, xs = np.nonzero(masks[g.frame_idx])
        scale = syn.BOX_SCALE // syn.FRAME_SIZE
        assert row["top_left"] == [xs.min() * scale, ys.min() * scale]
        assert row["bottom_right"] == [(xs.max() + 1) * scale - 1, (ys.max() + 1) * scale - 1]
        assert row["bottom_right"][0] < syn.BOX_SCALE and row["bottom_right"][1] < syn.BOX_SCALE


def test_avqa_answers_are_in_closed_sets_and_need_the_media():
    seen = {k: set() for k in syn.AVQA_QUESTIONS}
    sounding_sides = set()
    for i in range(200):
        c = syn.sample_avqa_clip(0, "train", i)
        for q in c.questions:
            assert q.answer in syn.AVQA_QUESTIONS[q.key][2]
            seen[q.key].add(q.answer)
        sounding_sides.add(c.clip.tracks[0].start[0] < syn.FRAME_SIZE / 2)
    assert all(seen[k] == set(v[2]) for k, v in syn.AVQA_QUESTIONS.items()), seen
    assert sounding_sides == {True, False}


# ----------------------------------------------------------------------------- metrics


def test_metric_parsers_and_kernels():
    assert sm.parse_answer("<s> x <answer>A</answer> so <answer> Left  Side </answer>.</s>") == "left side"
    assert sm.parse_answer("no tag") is None
    assert sm.parse_event("<event> Red Circle </event> <range> 2, 7 </range>") == ("red circle", (2, 7))
    assert sm.parse_box("top left corner is (1,2) and bottom right corner is (30,40)") == (1, 2, 30, 40)
    assert sm.parse_box("[3,4,50,60] and [1,1]") == (3, 4, 50, 60)
    assert sm.box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert sm.box_iou((0, 0, 9, 9), (0, 0, 19, 9)) == pytest.approx(0.5)
    assert sm.box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0
    gt = np.zeros((4, 4), bool)
    gt[:2] = True
    assert sm.mask_iou(gt, gt) == pytest.approx(1.0)
    assert sm.mask_iou(np.ones((4, 4)), gt) == pytest.approx(0.5)
    assert sm.mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == pytest.approx(1.0)  # empty GT: TN ratio
    row = {"event": "red circle", "start_time": 2, "end_time": 6}
    assert sm.score("ave", "<event> red circle </event> <range> 2,6 </range>", row) == 1.0
    assert sm.score("ave", "<event> red circle </event> <range> 2,4 </range>", row) == pytest.approx(0.8)
    assert sm.score("ave", "<event> cyan ring </event> <range> 2,6 </range>", row) == pytest.approx(0.6)
    assert sm.score("ave", "garbage", row) == pytest.approx(0.6)  # all background
    assert sm.score("avqa", "So the answer is <answer> Two </answer>.", {"answer": "two"}) == 1.0
    assert sm.score("avqa", "two", {"answer": "two"}) == 0.0
    box = {"top_left": [0, 0], "bottom_right": [9, 9]}
    assert sm.score("arig", "<obj>(0,0)(9,9)</obj>", box) == 1.0
    assert sm.score("arig", "no box", box) == 0.0
    with pytest.raises(ValueError, match="gt_mask"):
        sm.score("s4", "text", {})
    with pytest.raises(KeyError, match="answer"):
        sm.score("avqa", "<answer> x </answer>", {"question": "q"})
    with pytest.raises(ValueError, match="unknown task"):
        sm.score("avvp", "x", {})


def test_chance_levels_are_media_blind_baselines(dataset):
    levels = {t: sm.chance_level(t) for t in sm.TASKS}
    assert 0.3 < levels["avqa"] < 0.5        # per-question majority over 2-6 balanced answers
    assert 0.4 < levels["ave"] < 0.6         # background-heavy slots
    assert levels["s4_category"] < 0.25      # 6 balanced classes
    assert levels["s4"] < 0.3 and levels["arig"] < 0.3
    # on records: the best constant answer, never better than what it was measured on
    rows = syn.load_records(dataset, "avqa", "test")
    best = sm.chance_level("avqa", rows)
    majority = {}
    for r in rows:
        majority.setdefault(r["question"], []).append(r["answer"])
    assert best == pytest.approx(sum(max(v.count(a) for a in v) for v in majority.values()) / len(rows))
    s = sm.summary("arig", [0.6, 0.2])
    assert s["ciou@0.5"] == 0.5 and s["mean"] == pytest.approx(0.4) and s["chance"] == levels["arig"]


# ----------------------------------------------------------------------------- speed and CLI


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    m = _generate(tmp_path, 3, num_train=24, num_test=8)
    elapsed = time.perf_counter() - start
    clips = sum(c[s]["clips"] for c in m["counts"].values() for s in syn.SPLITS)
    print(f"generated {clips} clips in {elapsed:.2f} s ({1000 * elapsed / clips:.1f} ms/clip)")
    assert elapsed / clips < 0.1  # the default 4 x 160 records: well under a minute on one core


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        syn.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--seed", "--num-train", "--num-test", "--tasks", "--overwrite"):
        assert flag in out


def test_cli_runs_and_protects_existing_folders(tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "crab_jax.data.synthetic", "--out", str(out), "--seed", "5",
           "--num-train", "2", "--num-test", "1", "--tasks", "s4,ave", "--quiet"]
    repo = pathlib.Path(syn.__file__).resolve().parents[2]  # run this checkout's module
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "s4: 2 train / 1 test" in done.stdout
    assert json.loads((out / "manifest.json").read_text())["tasks"] == ["ave", "s4"]
    assert syn.main(cmd[3:]) == 2  # not empty, no --overwrite
    assert syn.main(cmd[3:] + ["--overwrite"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert syn.main(["--out", str(foreign), "--overwrite", "--quiet", "--num-train", "1", "--num-test", "0"]) == 2
    assert (foreign / "keep.txt").exists()
    with pytest.raises(SystemExit):
        syn.main(["--out", str(out), "--tasks", "s4,nope"])


def test_ensure_dataset_reuses_a_matching_dataset(tmp_path):
    m1 = syn.ensure_dataset(tmp_path, 0, 1, 1, ("s4",), progress=False)
    stamp = (tmp_path / "manifest.json").stat().st_mtime_ns
    assert syn.ensure_dataset(tmp_path, 0, 1, 1, ("s4",), progress=False) == m1
    assert (tmp_path / "manifest.json").stat().st_mtime_ns == stamp
    m2 = syn.ensure_dataset(tmp_path, 0, 2, 1, ("s4",), progress=False)
    assert m2["counts"]["s4"]["train"]["records"] == 2
    # an interrupted generation (our folders, no manifest) is regenerated, not refused
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "ave").mkdir()
    assert syn.ensure_dataset(tmp_path, 0, 2, 1, ("s4",), progress=False) == m2
    assert not (tmp_path / "ave").exists()
