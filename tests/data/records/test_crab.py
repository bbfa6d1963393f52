"""AV-UIE readers of the original Crab on small annotation files made here."""

from __future__ import annotations

import pytest

from crab_jax.data.errors import BadRecordError
from crab_jax.data.records.crab import ORDINALS, mask_tokens, read_crab_task
from crab_jax.data.records.record import AudioSpec, load_answer
from tests.data.records.annotations import write_file

AVS_ENTRY = dict(vid="v", uid="u1", s_min=0, s_sec=1, a_obj="dog", label="x")


def test_avqa_train_and_test(tmp_path):
    entry = dict(video_id="00006835", question_id=7, type='["Audio", "Counting"]', question="How many?",
                 answer="two", video_path="/abs/music-avqa/video_data/00006835.mp4",
                 audio_path="audio_data/00006835.mp3")
    write_file(tmp_path, "music_avqa/valid_train_samples.json", [entry])
    write_file(tmp_path, "music_avqa/test_samples.json", [entry])
    write_file(tmp_path, "music_avqa/converted_label/7.txt", "reasoning <answer> two </answer>")
    (rec,) = read_crab_task("avqa", "train", tmp_path).records
    # absolute path of the authors' machine rebased under the task folder
    assert rec.videos == ("music_avqa/video_data/00006835.mp4",)
    assert rec.audios == ("music_avqa/audio_data/00006835.mp3",)
    assert rec.audio == AudioSpec("avqa", 60) and rec.num_frames == 10
    assert rec.question == "How many?" and rec.answer is None
    assert load_answer(rec, tmp_path) == "reasoning <answer> two </answer>"
    (test,) = read_crab_task("avqa", "test", tmp_path).records
    assert test.gt == "two" and test.answer is None and test.mode == "test"


def test_ave_avvp_avcap(tmp_path):
    write_file(tmp_path, "ave/valid_train_samples.json", [dict(event="Bark", vid="a1", start_time=0, end_time=8)])
    write_file(tmp_path, "ave/test_samples.json", [dict(event="Bark", vid="a1", start_time=0, end_time=8)])
    (ave,) = read_crab_task("ave", "train", tmp_path).records
    assert ave.videos == ("ave/AVE/a1.mp4",) and ave.audios == ("ave/audio_data/a1.mp3",)
    assert ave.answer_file == "ave/converted_label/a1.txt" and ave.audio == AudioSpec("clip", 10)
    assert read_crab_task("ave", "test", tmp_path).records[0].gt == "event:Bark start_time:0 end_time:8"

    write_file(tmp_path, "avvp/train_samples.json", [
        dict(filename="f", vid="b1", event="e", label="<visual>Dog,(0 10)</visual> and <audio>Dog,(0 10)</audio>"),
        dict(filename="g", vid="b2", event="e")])  # no label -> skipped
    (avvp,) = read_crab_task("avvp", "train", tmp_path).records
    assert avvp.answer == "<visual_event>Dog,(0 10)</visual_event> and <audio_event>Dog,(0 10)</audio_event>"
    assert avvp.videos == ("avvp/llp_videos/b1.mp4",)

    write_file(tmp_path, "valor/train_samples.json", [dict(video_id="c1", desc="A dog barks.")])
    write_file(tmp_path, "valor/val_samples.json", [dict(video_id="c1", desc="A dog barks.")])
    (cap,) = read_crab_task("avcap", "train", tmp_path).records
    assert cap.answer == "A dog barks." and cap.videos == ("valor/video_data/c1.mp4",)
    assert read_crab_task("avcap", "test", tmp_path).records[0].gt == "A dog barks."


def test_arig_sentinel_and_targets(tmp_path):
    base = dict(split="train", audio_path="/x/AVS/v1s/u1/audio.wav", frame_path="/x/AVS/v1s/u1/frames/3.jpg",
                mask_path="v1s/u1/labels_semantic/3.png", a_obj="dog")
    write_file(tmp_path, "avs/v1s_grounding_samples.json", [
        dict(base, top_left=[1, 2], bottom_right=[30, 40]),
        dict(base, top_left=[1000, 1000], bottom_right=[1000, 1000]),  # no sounding object
        dict(base, split="test", top_left=[1, 2], bottom_right=[30, 40])])
    (rec,) = read_crab_task("arig", "train", tmp_path).records
    assert rec.image_path == "avs/v1s/u1/frames/3.jpg" and rec.audios == ("avs/v1s/u1/audio.wav",)
    assert rec.frame_idx == 3 and rec.audio == AudioSpec("clip", 5)
    assert rec.answer == ("The sounding object is dog. Its coordinate of top left corner is (1,2) and "
                          "coordinate of bottom right corner is (30,40)")
    (test,) = read_crab_task("arig", "test", tmp_path).records
    assert test.gt == "The sounding object is dog. Its coordinates are <obj>(1,2)(30,40)</obj>."


def test_avs_expansion_rules(tmp_path):
    for name in ("s4", "ms3", "avss"):
        write_file(tmp_path, f"avs/{name}_samples.json", [dict(AVS_ENTRY, split="train"),
                                                          dict(AVS_ENTRY, uid="u2", split="test"),
                                                          dict(AVS_ENTRY, split="val")])
    s4 = read_crab_task("s4", "train", tmp_path).records
    assert [r.frame_idx for r in s4] == [0]  # v1s trains on frame 0 only
    assert s4[0].frame_paths == tuple(f"avs/v1s/u1/frames/{i}.jpg" for i in range(5))
    assert s4[0].mask_path == "avs/v1s/u1/labels_semantic/0.png" and s4[0].audio == AudioSpec("clip", 5)
    assert s4[0].answer.endswith("at the first second is <mask_start>" + mask_tokens() + "<mask_end>")
    assert len(read_crab_task("s4", "test", tmp_path).records) == 5

    ms3 = read_crab_task("ms3", "train", tmp_path).records
    assert [r.frame_idx for r in ms3] == list(range(5)) and ms3[0].frame_paths[0] == "avs/v1m/u1/frames/0.jpg"
    assert "at the fifth second" in ms3[4].answer
    ms3_test = read_crab_task("ms3", "test", tmp_path).records
    assert all("makes the sound in the third second" in r.gt for r in ms3_test)  # quirk

    avss = read_crab_task("avss", "train", tmp_path, seed=3).records
    assert len(avss) == 1 and 0 <= avss[0].frame_idx <= 9
    assert avss[0].mask_path == f"avs/v2/u1/labels_rgb/{avss[0].frame_idx}.png"
    assert read_crab_task("avss", "train", tmp_path, seed=3).records == avss  # seeded
    avss_test = read_crab_task("avss", "test", tmp_path).records
    assert len(avss_test) == 10 and avss_test[4].audio == AudioSpec("frame", 10, 4, pad_to_second=True)
    assert avss_test[4].gt == "The category of the sound-making object and its mask image are <mask_start>" \
        + mask_tokens() + "<mask_end>"


def test_ref_avs_csv(tmp_path):
    write_file(tmp_path, "ref_avs/metadata.csv",
               "vid,uid,split,fid,exp\nold,abc_d_guitar_3,train,11,The loudest one\nold,abc_d_guitar_3,test_s,11,x\n")
    (rec,) = read_crab_task("ref-avs", "train", tmp_path).records
    assert rec.fields["obj"] == "guitar" and rec.fields["vid"] == "abc_d"
    i = rec.frame_idx
    assert rec.mask_path == f"ref_avs/gt_mask/abc_d/fid_11/0000{i}.png"
    assert rec.answer.startswith(f"At the {ORDINALS[i]} second in the video, The loudest one is guitar.")
    test = read_crab_task("ref-avs", "test", tmp_path, ref_avs_test_split="test_s").records
    assert len(test) == 10 and test[2].gt == "x is <mask_start>" + mask_tokens() + "<mask_end>"
    assert read_crab_task("ref-avs", "test", tmp_path, ref_avs_test_split="test_u").records == []


# ------------------------------------------------------------------------- bad input


def test_truncated_json_names_file(tmp_path):
    write_file(tmp_path, "ave/valid_train_samples.json", '[{"event": "Bark", "vid": "a1", "sta')
    with pytest.raises(BadRecordError) as e:
        read_crab_task("ave", "train", tmp_path)
    assert e.value.path == "ave/valid_train_samples.json" and "truncated JSON" in e.value.reason


def test_missing_annotation_and_not_a_list(tmp_path):
    with pytest.raises(BadRecordError, match="annotation file not found"):
        read_crab_task("avvp", "train", tmp_path)
    write_file(tmp_path, "avvp/train_samples.json", {"vid": "x"})
    with pytest.raises(BadRecordError, match="expected a JSON list"):
        read_crab_task("avvp", "train", tmp_path)


def test_missing_field_strict_and_lenient(tmp_path):
    write_file(tmp_path, "ave/valid_train_samples.json",
               [dict(event="Bark", vid="a1", start_time=0, end_time=8), dict(event="Bark", start_time=0, end_time=8),
                "not an object"])
    with pytest.raises(BadRecordError) as e:
        read_crab_task("ave", "train", tmp_path)
    assert e.value.path == "ave/valid_train_samples.json#1" and e.value.reason == "missing field 'vid'"
    got = read_crab_task("ave", "train", tmp_path, strict=False)
    assert len(got.records) == 1 and [x.path for x in got.errors] == ["ave/valid_train_samples.json#1",
                                                                           "ave/valid_train_samples.json#2"]


def test_bad_values_name_the_entry(tmp_path):
    write_file(tmp_path, "avs/v1s_grounding_samples.json", [
        dict(split="train", audio_path="a.wav", frame_path="f/x.jpg", top_left=[1, 2], bottom_right=[3, 4], a_obj="d")])
    with pytest.raises(BadRecordError, match="#0: bad value"):
        read_crab_task("arig", "train", tmp_path)
