"""The transfer study of the tiny Crab+ on CPU:
``python -m crab_jax.study transfer --config configs/study_crab_plus_tiny.py --workdir DIR``.

PLACEHOLDER DOCSTRING
"""

import pathlib

from crab_jax.config.loader import load_config_file
from crab_jax.study.schema import with_study_section

TASKS = ("avqa", "ave", "s4", "ks")
SEEDS = (0, 1, 2)
STEPS = 200
NUM_TRAIN = 128
NUM_TEST = 32


def get_config():
    c = load_config_file(str(pathlib.Path(__file__).with_name("crab_plus_tiny.py")))
    c.stage = "study_crab_plus_tiny"
    c.train.num_steps = STEPS
    c.data.tasks = TASKS
    c.data.synthetic.num_train = NUM_TRAIN
    c.data.synthetic.num_test = NUM_TEST
    c.checkpoint.every_steps = STEPS
    c.checkpoint.keep = 1
    c.metrics.log_every = 25
    c.metrics.tensorboard = False
    c = with_study_section(c)
    c.study.tasks = TASKS
    c.study.seeds = SEEDS
    c.study.shared_trainable = (r"^lm_head\.",)
    return c
