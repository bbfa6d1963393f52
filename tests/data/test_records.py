"""AV-UIE / quick-start / pretraining / AVUIE_2 readers on small annotation files made here."""

from __future__ import annotations

import json
import pickle

import pytest

from crab_jax.data.records import readers as R
from crab_jax.data.errors import BadRecordError


def _write(root, rel, obj):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


AVS_ENTRY = dict(vid="v", uid="u1", s_min=0, s_sec=1, a_obj="dog", label="x")


def test_avqa_train_and_test(tmp_path):
    entry = dict(video_id="00006835", question_id=7, type='["Audio", "Counting"]', question="How many?",
                 answer="two", video_path="/abs/music-avqa/video_data/00006835.mp4",
                 audio_path="audio_data/00006835.mp3")
    _write(tmp_path, "music_avqa/valid_train_samples.json", [entry])
    _write(tmp_path, "music_avqa/test_samples.json", [entry])
    _write(tmp_path, "music_avqa/converted_label/7.txt", "reasoning <answer> two </answer>")
    (rec,) = R.read_crab_task("avqa", "train", tmp_path).records
    # absolute path of the authors' machine rebased under the task folder
    assert rec.videos == ("music_avqa/video_data/00006835.mp4",)
    assert rec.audios == ("music_avqa/audio_data/00006835.mp3",)
    assert rec.audio == R.AudioSpec("avqa", 60) and rec.num_frames == 10
    assert rec.question == "How many?" and rec.answer is None
    assert R.load_answer(rec, tmp_path) == "reasoning <answer> two </answer>"
    (test,) = R.read_crab_task("avqa", "test", tmp_path).records
    assert test.gt == "two" and test.answer is None and test.mode == "test"


def test_ave_avvp_avcap(tmp_path):
    _write(tmp_path, "ave/valid_train_samples.json", [dict(event="Bark", vid="a1", start_time=0, end_time=8)])
    _write(tmp_path, "ave/test_samples.json", [dict(event="Bark", vid="a1", start_time=0, end_time=8)])
    (ave,) = R.read_crab_task("ave", "train", tmp_path).records
    assert ave.videos == ("ave/AVE/a1.mp4",) and ave.audios == ("ave/audio_data/a1.mp3",)
    assert ave.answer_file == "ave/converted_label/a1.txt" and ave.audio == R.AudioSpec("clip", 10)
    assert R.read_crab_task("ave", "test", tmp_path).records[0].gt == "event:Bark start_time:0 end_time:8"

    _write(tmp_path, "avvp/train_samples.json", [
        dict(filename="f", vid="b1", event="e", label="<visual>Dog,(0 10)</visual> and <audio>Dog,(0 10)</audio>"),
        dict(filename="g", vid="b2", event="e")])  # no label -> skipped
    (avvp,) = R.read_crab_task("avvp", "train", tmp_path).records
    assert avvp.answer == "<visual_event>Dog,(0 10)</visual_event> and <audio_event>Dog,(0 10)</audio_event>"
    assert avvp.videos == ("avvp/llp_videos/b1.mp4",)

    _write(tmp_path, "valor/train_samples.json", [dict(video_id="c1", desc="A dog barks.")])
    _write(tmp_path, "valor/val_samples.json", [dict(video_id="c1", desc="A dog barks.")])
    (cap,) = R.read_crab_task("avcap", "train", tmp_path).records
    assert cap.answer == "A dog barks." and cap.videos == ("valor/video_data/c1.mp4",)
    assert R.read_crab_task("avcap", "test", tmp_path).records[0].gt == "A dog barks."


def test_arig_sentinel_and_targets(tmp_path):
    base = dict(split="train", audio_path="/x/AVS/v1s/u1/audio.wav", frame_path="/x/AVS/v1s/u1/frames/3.jpg",
                mask_path="v1s/u1/labels_semantic/3.png", a_obj="dog")
    _write(tmp_path, "avs/v1s_grounding_samples.json", [
        dict(base, top_left=[1, 2], bottom_right=[30, 40]),
        dict(base, top_left=[1000, 1000], bottom_right=[1000, 1000]),  # no sounding object
        dict(base, split="test", top_left=[1, 2], bottom_right=[30, 40])])
    (rec,) = R.read_crab_task("arig", "train", tmp_path).records
    assert rec.image_path == "avs/v1s/u1/frames/3.jpg" and rec.audios == ("avs/v1s/u1/audio.wav",)
    assert rec.frame_idx == 3 and rec.audio == R.AudioSpec("clip", 5)
    assert rec.answer == ("The sounding object is dog. Its coordinate of top left corner is (1,2) and "
                          "coordinate of bottom right corner is (30,40)")
    (test,) = R.read_crab_task("arig", "test", tmp_path).records
    assert test.gt == "The sounding object is dog. Its coordinates are <obj>(1,2)(30,40)</obj>."


def test_avs_expansion_rules(tmp_path):
    for name in ("s4", "ms3", "avss"):
        _write(tmp_path, f"avs/{name}_samples.json",
               [dict(AVS_ENTRY, split="train"), dict(AVS_ENTRY, uid="u2", split="test"), dict(AVS_ENTRY, split="val")])
    s4 = R.read_crab_task("s4", "train", tmp_path).records
    assert [r.frame_idx for r in s4] == [0]  # v1s trains on frame 0 only
    assert s4[0].frame_paths == tuple(f"avs/v1s/u1/frames/{i}.jpg" for i in range(5))
    assert s4[0].mask_path == "avs/v1s/u1/labels_semantic/0.png" and s4[0].audio == R.AudioSpec("clip", 5)
    assert s4[0].answer.endswith("at the first second is <mask_start>" + R.mask_tokens() + "<mask_end>")
    assert len(R.read_crab_task("s4", "test", tmp_path).records) == 5

    ms3 = R.read_crab_task("ms3", "train", tmp_path).records
    assert [r.frame_idx for r in ms3] == list(range(5)) and ms3[0].frame_paths[0] == "avs/v1m/u1/frames/0.jpg"
    assert "at the fifth second" in ms3[4].answer
    ms3_test = R.read_crab_task("ms3", "test", tmp_path).records
    assert all("makes the sound in the third second" in r.gt for r in ms3_test)  # quirk

    avss = R.read_crab_task("avss", "train", tmp_path, seed=3).records
    assert len(avss) == 1 and 0 <= avss[0].frame_idx <= 9
    assert avss[0].mask_path == f"avs/v2/u1/labels_rgb/{avss[0].frame_idx}.png"
    assert R.read_crab_task("avss", "train", tmp_path, seed=3).records == avss  # seeded
    avss_test = R.read_crab_task("avss", "test", tmp_path).records
    assert len(avss_test) == 10 and avss_test[4].audio == R.AudioSpec("frame", 10, 4, pad_to_second=True)
    assert avss_test[4].gt == "The category of the sound-making object and its mask image are <mask_start>" \
        + R.mask_tokens() + "<mask_end>"


def test_ref_avs_csv(tmp_path):
    _write(tmp_path, "ref_avs/metadata.csv",
           "vid,uid,split,fid,exp\nold,abc_d_guitar_3,train,11,The loudest one\nold,abc_d_guitar_3,test_s,11,x\n")
    (rec,) = R.read_crab_task("ref-avs", "train", tmp_path).records
    assert rec.fields["obj"] == "guitar" and rec.fields["vid"] == "abc_d"
    i = rec.frame_idx
    assert rec.mask_path == f"ref_avs/gt_mask/abc_d/fid_11/0000{i}.png"
    assert rec.answer.startswith(f"At the {R.ORDINALS[i]} second in the video, The loudest one is guitar.")
    test = R.read_crab_task("ref-avs", "test", tmp_path, ref_avs_test_split="test_s").records
    assert len(test) == 10 and test[2].gt == "x is <mask_start>" + R.mask_tokens() + "<mask_end>"
    assert R.read_crab_task("ref-avs", "test", tmp_path, ref_avs_test_split="test_u").records == []


def test_pretrain_sets(tmp_path):
    _write(tmp_path, "video_llava/llava_image_.json",
           [dict(image="coco/1.jpg", conversations=[{"value": "<image>\nWhat is it?"}, {"value": "A cat"}])])
    _write(tmp_path, "video_llava/valid_valley_.json",
           [dict(video="v/1.mp4", conversations=[{"value": "Describe.\n<video>"}, {"value": "Done!"}])])
    (img,) = R.read_pretrain_task("image_caption", tmp_path).records
    assert img.question == "What is it?" and img.answer == "A cat." and img.image_path == "video_llava/coco/1.jpg"
    (vid,) = R.read_pretrain_task("video_caption", tmp_path).records
    assert vid.question == "Describe." and vid.answer == "Done!" and vid.num_frames == 8

    _write(tmp_path, "audiocaps/train.json", [dict(audiocap_id="12347", start_time=0, caption="a"),
                                              dict(audiocap_id="5", start_time=0, caption="b")])
    _write(tmp_path, "audiocaps/val.json", [dict(audiocap_id="12347", start_time=0, caption="c")])
    caps = R.read_pretrain_task("audio_caption", tmp_path).records
    assert [r.answer for r in caps] == ["b", "c"] and caps[0].audios == ("audiocaps/data/5.wav",)

    _write(tmp_path, "lvis/train_samples.json", [
        dict(id=9, image_id=42, category_id=1, bbox=[0, 0, 1, 1], name="cat", def_="x", area=999, **{"def": "d"}),
        dict(id=10, image_id=42, category_id=1, bbox=[0, 0, 1, 1], name="cat", area=5000, **{"def": "a feline"})])
    (seg,) = R.read_pretrain_task("lvis_seg", tmp_path).records
    assert seg.image_path == "lvis/train2017/000000000042.jpg" and seg.mask_path == "lvis/binary_mask/10.png"


def test_crab_plus_layout(tmp_path):
    _write(tmp_path, "AVUIE_2/a2v/train.json", [dict(video1_path="1.mp4", video2_path="2.mp4", audio_path="a.wav",
                                                     correct_video=2, audio_event="", video1_event="",
                                                     video2_event="", label="<answer>2</answer>.")])
    (a2v,) = R.read_crab_plus_task("a2v", "train", tmp_path).records
    assert a2v.videos == ("AVUIE_2/a2v/video/1.mp4", "AVUIE_2/a2v/video/2.mp4")
    assert a2v.audios == ("AVUIE_2/a2v/audio/a.wav",) and a2v.answer == "<answer>2</answer>."
    _write(tmp_path, "AVUIE_2/meld/test.json", [dict(video_path="m.mp4", audio_path="m.wav", Emotion="joy")])
    (meld,) = R.read_crab_plus_task("meld", "test", tmp_path).records
    assert meld.num_frames == 4 and meld.gt == "<answer>joy</answer>."
    _write(tmp_path, "AVUIE_2/s4/test.json", [dict(visual_path="v1s/u/frames/2.jpg", audio_path="v1s/u/audio.wav",
                                                   vid="v", uid="u", a_obj="dog", frame_idx=2)])
    (s4,) = R.read_crab_plus_task("s4", "test", tmp_path).records
    assert s4.image_path == "AVUIE_2/s4/v1s/u/frames/2.jpg" and s4.frame_idx == 2
    assert s4.gt == "The object making the sound in the video is dog."
    with pytest.raises(ValueError, match="train-only"):
        R.read_crab_plus_task("unav", "test", tmp_path)


def test_quick_start_requests(tmp_path):
    path = _write(tmp_path, "example.json", [
        {"task": "s4", "audio_path": "s4/audio.wav", "image_path": "s4/0.jpg", "mask_path": "s4/0.png"},
        {"task": "avss", "audio_path": "avss/audio.wav", "image_path": "avss/3.jpg", "mask_path": "avss/3.png"},
        {"task": "ref-avs", "audio_path": "r/audio.wav", "image_path": "r/7.jpg", "exp": "The dog"}])
    s4, avss, ref = R.read_quick_start(path).records
    assert s4.audio == R.AudioSpec("frame", 5, 0) and s4.mode == "quick_start"
    assert avss.audio == R.AudioSpec("frame", 10, 3) and ref.audio == R.AudioSpec("clip", 10)
    assert ref.fields["exp"] == "The dog"
    assert pickle.loads(pickle.dumps(ref)) == ref  # records travel to worker processes
    with pytest.raises(BadRecordError, match="must be relative"):
        R.quick_start_record({"task": "ave", "video_path": "/abs/v.mp4", "audio_path": "a.mp3"})


# ------------------------------------------------------------------------- bad input


def test_truncated_json_names_file(tmp_path):
    _write(tmp_path, "ave/valid_train_samples.json", '[{"event": "Bark", "vid": "a1", "sta')
    with pytest.raises(BadRecordError) as e:
        R.read_crab_task("ave", "train", tmp_path)
    assert e.value.path == "ave/valid_train_samples.json" and "truncated JSON" in e.value.reason


def test_missing_annotation_and_not_a_list(tmp_path):
    with pytest.raises(BadRecordError, match="annotation file not found"):
        R.read_crab_task("avvp", "train", tmp_path)
    _write(tmp_path, "avvp/train_samples.json", {"vid": "x"})
    with pytest.raises(BadRecordError, match="expected a JSON list"):
        R.read_crab_task("avvp", "train", tmp_path)


def test_missing_field_strict_and_lenient(tmp_path):
    _write(tmp_path, "ave/valid_train_samples.json",
           [dict(event="Bark", vid="a1", start_time=0, end_time=8), dict(event="Bark", start_time=0, end_time=8),
            "not an object"])
    with pytest.raises(BadRecordError) as e:
        R.read_crab_task("ave", "train", tmp_path)
    assert e.value.path == "ave/valid_train_samples.json#1" and e.value.reason == "missing field 'vid'"
    got = R.read_crab_task("ave", "train", tmp_path, strict=False)
    assert len(got.records) == 1 and [x.path for x in got.errors] == ["ave/valid_train_samples.json#1",
                                                                       "ave/valid_train_samples.json#2"]


def test_bad_values_and_paths(tmp_path):
    _write(tmp_path, "avs/v1s_grounding_samples.json", [dict(split="train", audio_path="a.wav", frame_path="f/x.jpg",
                                                             top_left=[1, 2], bottom_right=[3, 4], a_obj="d")])
    with pytest.raises(BadRecordError, match="#0: bad value"):
        R.read_crab_task("arig", "train", tmp_path)
    with pytest.raises(BadRecordError, match="relative to the data root"):
        R.resolve(tmp_path, "../etc/passwd")
    rec = R.Record(family="crab", task="ave", mode="train", split="train", source="s#0", answer_file="ave/none.txt")
    with pytest.raises(BadRecordError, match="label file not found") as e:
        R.load_answer(rec, tmp_path)
    assert e.value.path == "ave/none.txt"
    err = pickle.loads(pickle.dumps(BadRecordError("p", "why")))
    assert (err.path, err.reason, str(err)) == ("p", "why", "p: why")
