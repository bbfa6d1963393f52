"""The transfer study of Crab+ at the paper's size on a TPU v4 slice, over AV-UIE v2 (its 19 tasks).

``python -m crab_jax.study transfer --config configs/study_crab_plus_tpu_v4.py --workdir DIR
--config.model.init_checkpoint=CONVERTED --config.data.path=ROOT --config.data.tokenizer=CONVERTED/tokenizer``

The model, optimizer, data and slice of ``configs/crab_plus_tpu_v4.py`` (the released recipe: the
Qwen2.5-Omni-7B thinker, I-LoRA k = 3, r = 128, alpha = 256 on q, k, v, o, gate, up, down of all
three towers; only the adapters train, the thinker stays frozen). ``CONVERTED`` is the base
thinker converted WITHOUT the released adapter (``crab-convert-weights --family crab_plus to-jax
--hf Qwen2.5-Omni-7B --tokenizer Qwen2.5-Omni-7B --out CONVERTED``, no ``--adapter``): every run
starts its adapters from zero, as the original's training did. ``ROOT`` holds ``AVUIE_2/``.

Per seed: nineteen single-task models (plain LoRA at r = 128) and four multi-task models (LoRA
r = 128, LoRA r = 384 alpha 768, I-LoRA, the floor): 69 runs for three seeds, every one of
``STEPS`` steps of 256 samples (a fixed step count, compute-matched), each scored on the 19
tasks' test splits with the family's held-out metric per task. The recipe trains the adapters
only, so nothing is shared between the variants (``study.shared_trainable = ()``): the floor is
the untouched base thinker, scored without training (one build and one evaluation per seed, no
steps).
"""

import pathlib

from crab_jax.config.loader import load_config_file
from crab_jax.study.schema import with_study_section

STEPS = 3000


def get_config():
    c = load_config_file(str(pathlib.Path(__file__).with_name("crab_plus_tpu_v4.py")))
    c.stage = "study_crab_plus_tpu_v4"
    c.train.num_steps = STEPS
    # The recipe's fixed media slots (10 frames, 10 s of audio) stay: a single-task run's batches
    # then have the multi-task runs' shapes (one compile per token bucket, whatever the task set).
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 1
    c = with_study_section(c)
    c.study.tasks = tuple(c.data.tasks)  # the 19 AV-UIE v2 tasks of finetune_omni.sh
    c.study.seeds = (0, 1, 2)
    c.study.shared_trainable = ()        # adapters only, as released: the floor is the untouched base
    return c
