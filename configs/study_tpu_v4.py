"""The transfer study at the paper's size on a TPU v4 slice, over AV-UIE (Crab's nine tasks).

``python -m crab_jax.study transfer --config configs/study_tpu_v4.py --workdir DIR
--config.model.init_checkpoint=CONVERTED --config.data.path=AVUIE --config.data.tokenizer=LLAMA2``

The model, optimizer and data of ``configs/tpu_v4.py`` (finetune stage: LLaMA-2-7B-chat + CLIP
+ BEATs, I-LoRA k = 3, r = 8, alpha = 16 on every projection; the projectors and adapters train,
the LLM and encoders stay frozen). Per seed: nine single-task models (plain LoRA at r = 8), and
four multi-task models (LoRA r = 8, LoRA r = 24 alpha 48, I-LoRA, the frozen-base floor): 39
runs for three seeds, every one of ``STEPS`` steps of 256 samples (a fixed step count, so a
single-task run sees its task as often as the multi-task run sees all of them together), each
scored on the nine tasks' test splits.
"""

import pathlib

from crab_jax.config.loader import load_config_file
from crab_jax.study.schema import with_study_section

STEPS = 3000


def get_config():
    c = load_config_file(str(pathlib.Path(__file__).with_name("tpu_v4.py")))
    c.stage = "study_tpu_v4"
    c.train.num_steps = STEPS
    # Fixed media slots: a single-task run's batches then have the multi-task runs' shapes
    # (0 would size them from each run's own tasks: a compile per task set).
    c.data.frame_slots = 11      # Ref-AVS test prompts show 11 frames
    c.data.audio_slots = 10
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 1
    c = with_study_section(c)
    c.study.tasks = tuple(c.data.tasks)  # avqa, ave, avvp, arig, avcap, ms3, s4, avss, ref-avs
    c.study.seeds = (0, 1, 2)
    c.study.shared_trainable = (r"^vl_projector\.", r"^al_projector\.")
    return c
