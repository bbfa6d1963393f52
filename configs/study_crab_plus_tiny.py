"""The transfer study of the tiny Crab+ on CPU:
``python -m crab_jax.study transfer --config configs/study_crab_plus_tiny.py --workdir DIR``.

The tiny Crab+ thinker of ``configs/crab_plus_tiny.py`` (its ``synthetic`` variant: a 2-layer
Qwen2.5 LLM with M-RoPE, 2-block vision and 2-layer audio towers, I-LoRA k = 3, r = 4 in q, k,
v, o, gate, up, down of all three towers) on the built-in synthetic dataset in the AV-UIE v2
layout, its four tasks (AVQA, AVE, S4 category + box + points, KS). Per seed: one single-task
model per task (plain LoRA) and one multi-task model per variant (LoRA at the same r, LoRA at
I-LoRA's rank budget, I-LoRA, the floor), all with the same steps, batch, data and seed, each
scored on every task's held-out clips (the family's held-out metric: AVQA / AVE answer scores,
the S4 category, KS exact match).

What trains, and what the floor is: Crab+ has no projectors between its towers and the LLM (the
vision merger is part of the frozen tower), so its released recipe trains the adapters only
(``configs/study_crab_plus_tpu_v4.py``: ``study.shared_trainable = ()``, the floor = the
untouched base, scored without training). Here the LLM is random, and with its random LM head
frozen an adapters-only tiny model barely moves (``configs/crab_plus_tiny.py``: 5.99 -> 5.55 in
200 steps), so the LM head trains in every run (``study.shared_trainable``): the floor is then
the frozen base with a trained head, and the variants still differ in their adapters only.
``--config.study.shared_trainable='()'`` gives the released recipe's setting.

Size: ``STEPS`` = 200 steps of 8 samples per run (compute-matched), ``NUM_TRAIN`` = 128
training clips and ``NUM_TEST`` = 32 held-out clips per task, 40 new tokens (the S4 answer fits).

Time, measured (2026-12-03, 2 CPU cores shared with test runs): 16-27 min per seed (8 runs of
47-290 s of training each, including compiles, and 7-25 s of scoring): seed 0 27 min under a
heavy test load, seed 1 20 min, seed 2 15.7 min; the three seeds about an hour.
``--config.study.seeds='(0,)'`` gives a one-seed table in about 20 min. The result and what it
says: docs/study.md ("Crab+").
"""

import pathlib

from crab_jax.config.loader import load_config_file
from crab_jax.study.schema import cpu_study

TASKS = ("avqa", "ave", "s4", "ks")
SEEDS = (0, 1, 2)
STEPS = 200
NUM_TRAIN = 128
NUM_TEST = 32


def get_config():
    c = load_config_file(str(pathlib.Path(__file__).with_name("crab_plus_tiny.py")))
    c = cpu_study(c, stage="study_crab_plus_tiny", tasks=TASKS, seeds=SEEDS, steps=STEPS)
    c.data.synthetic.num_train = NUM_TRAIN
    c.data.synthetic.num_test = NUM_TEST
    # The random tiny LLM's LM head (see above): trained in every run, the floor's too.
    c.study.shared_trainable = (r"^lm_head\.",)
    return c
