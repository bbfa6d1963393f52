"""Readers of Crab's pretraining sets on small annotation files made here."""

from __future__ import annotations

from crab_jax.data.records.pretrain import read_pretrain_task
from tests.data.records.annotations import write_file


def test_pretrain_sets(tmp_path):
    write_file(tmp_path, "video_llava/llava_image_.json",
               [dict(image="coco/1.jpg", conversations=[{"value": "<image>\nWhat is it?"}, {"value": "A cat"}])])
    write_file(tmp_path, "video_llava/valid_valley_.json",
               [dict(video="v/1.mp4", conversations=[{"value": "Describe.\n<video>"}, {"value": "Done!"}])])
    (img,) = read_pretrain_task("image_caption", tmp_path).records
    assert img.question == "What is it?" and img.answer == "A cat." and img.image_path == "video_llava/coco/1.jpg"
    (vid,) = read_pretrain_task("video_caption", tmp_path).records
    assert vid.question == "Describe." and vid.answer == "Done!" and vid.num_frames == 8

    write_file(tmp_path, "audiocaps/train.json", [dict(audiocap_id="12347", start_time=0, caption="a"),
                                                  dict(audiocap_id="5", start_time=0, caption="b")])
    write_file(tmp_path, "audiocaps/val.json", [dict(audiocap_id="12347", start_time=0, caption="c")])
    caps = read_pretrain_task("audio_caption", tmp_path).records
    assert [r.answer for r in caps] == ["b", "c"] and caps[0].audios == ("audiocaps/data/5.wav",)

    write_file(tmp_path, "lvis/train_samples.json", [
        dict(id=9, image_id=42, category_id=1, bbox=[0, 0, 1, 1], name="cat", def_="x", area=999, **{"def": "d"}),
        dict(id=10, image_id=42, category_id=1, bbox=[0, 0, 1, 1], name="cat", area=5000, **{"def": "a feline"})])
    (seg,) = read_pretrain_task("lvis_seg", tmp_path).records
    assert seg.image_path == "lvis/train2017/000000000042.jpg" and seg.mask_path == "lvis/binary_mask/10.png"
