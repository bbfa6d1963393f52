"""The original's stages (``recipes.STAGES``): segmentation pretraining reads the LVIS records
(an LVIS-layout folder written here) and they become segmentation examples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from crab_jax.config.loader import load_config_file
from crab_jax.config.sections import RunConfig
from crab_jax.data.records.select import read_records
from crab_jax.families.crab import examples as E
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.families.crab.example_builder import example_builder
from crab_jax.families.crab.presets import tiny_crab_config, unused_modules
from crab_jax.families.crab.recipes import PACK_MEDIA_PER_ROW, PACK_SAMPLES_PER_ROW, paper_config
from tests.data.pipeline.crab_data import word_tokenizer
from tests.data.records.annotations import write_file


def write_lvis(root, image_size: int = 40):
    """``lvis/``: two objects of one image, one below the original's area threshold (1000)."""
    write_file(root, "lvis/train_samples.json", [
        {"id": 9, "image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "name": "dot", "def": "small", "area": 999},
        {"id": 10, "image_id": 42, "category_id": 2, "bbox": [4, 4, 20, 20], "name": "cat", "def": "a feline",
         "area": 5000}])
    rng = np.random.default_rng(0)
    (root / "lvis" / "train2017").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(
        root / "lvis" / "train2017" / "000000000042.jpg")
    mask = np.zeros((image_size, image_size), np.uint8)
    mask[4:24, 4:24] = 255
    (root / "lvis" / "binary_mask").mkdir(parents=True)
    Image.fromarray(mask).save(root / "lvis" / "binary_mask" / "10.png")
    return mask


def test_pretrain_seg_reads_lvis_records_into_segmentation_examples(tmp_path):
    mask = write_lvis(tmp_path)
    run = RunConfig.from_config(paper_config("pretrain_seg"))
    tasks = tuple(run.data.tasks)
    records, errors = read_records(tmp_path, tasks)
    assert errors == []
    assert [(r.task, r.mask_path, r.fields["name"]) for r in records] == [("lvis_seg", "lvis/binary_mask/10.png", "cat")]
    assert run.model.seg_branch and set(unused_modules(run.model, run.data)) == {"audio_encoder", "al_projector"}
    tok, base = word_tokenizer(records, tmp_path)
    cfg = tiny_crab_config(base_vocab=base)
    # The stage's frame slots (sized from its tasks); no LVIS prompt has audio, and 0 audio slots
    # from tasks with no audio is refused by media_slots (reported), so one is set here.
    builder = example_builder(cfg, dataclasses.replace(run.data, audio_slots=1), tmp_path, tok)
    ex = builder.build(records[0], 0)
    assert ex.is_seg and not ex.is_avss and ex.frames.shape[0] == 1
    ids = [int(i) for i in ex.input_ids]
    assert all(ids.count(t) == 1 for t in cfg.mask_token_ids)  # the target's <mask_k> tokens
    assert set(np.unique(ex.gt_mask)) == {0.0, 1.0}
    resized = np.asarray(Image.fromarray(mask).resize(ex.gt_mask.shape[-2:][::-1], Image.NEAREST)) > 0
    np.testing.assert_array_equal(ex.gt_mask.reshape(resized.shape), resized.astype(ex.gt_mask.dtype))
    info = builder.plan_info(records[0])
    assert info.fbank_frames == 0  # LVIS shows no audio
    batch = builder.collate([ex], Bucket(seq_len=info.expanded_len, fbank_frames=E.BEATS_PATCH))
    assert batch["is_seg"].tolist() == [True] and batch["gt_mask"].max() == 1
    assert batch["task_id"].tolist() == [tasks.index("lvis_seg")]


def test_the_packed_option_packs_the_finetune_rows_and_is_refused_for_mask_stages():
    plain = load_config_file("configs/tpu_v4.py:finetune")
    packed = load_config_file("configs/tpu_v4.py:finetune,packed")
    assert plain.data.packing.seq_len == 0
    assert packed.data.packing.seq_len == plain.data.seq_len
    assert packed.train.global_batch * PACK_SAMPLES_PER_ROW == plain.train.global_batch
    assert packed.data.packing.frame_slots == packed.data.packing.audio_slots == PACK_MEDIA_PER_ROW
    with pytest.raises(ValueError, match="'packed': stage 'avs' trains masks"):
        load_config_file("configs/tpu_v4.py:avs,packed")
    with pytest.raises(ValueError, match=r"unknown option 'fast' \(known: cosine, packed\)"):
        load_config_file("configs/tpu_v4.py:finetune,fast")
