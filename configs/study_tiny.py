"""The transfer study on CPU: ``python -m crab_jax.study transfer --config configs/study_tiny.py --workdir DIR``.

The tiny Crab of ``configs/tiny.py`` on the built-in synthetic dataset: per seed one single-task
model per study task (plain LoRA) and one multi-task model per adapter variant (LoRA at the
same r, LoRA at I-LoRA's rank budget, I-LoRA with k = 3 heads, the frozen-base floor), all
with the same steps, batch, data and seed; the base LLM and the encoders are frozen (the adapters,
the Q-Former projectors and the LM head train: ``study.shared_trainable`` below). Every model is scored on every study task's held-out clips.

Size: ``STEPS`` = 200 steps of 16 samples per run (compute-matched: ``study.multi_steps`` =
"compute"), ``NUM_TEST`` = 32 held-out clips per task, 16 new tokens.

Time, measured (2026-12-03, 2 CPU cores, a few test runs sharing them at times): the whole
study, 30 runs (6 tasks x 3 seeds single-task + 4 variants x 3 seeds multi-task), took 25 min:
22.5 min training including compiles (~45 s per run; the persistent compilation cache serves
every later run of a shape), 1.7 min scoring. The result and what it says: docs/study.md.
"""

import pathlib

from crab_jax.config.loader import load_config_file
from crab_jax.study.schema import cpu_study

# The six synthetic QA tasks built to compete (crab_jax.data.synthetic.qa_scenes): what is heard,
# what is seen, how many are seen, where / when the sounding object is, whether sound and sight agree.
TASKS = ("audcls", "viscls", "count", "where", "match", "when")
SEEDS = (0, 1, 2)
STEPS = 200
NUM_TEST = 32
MAX_NEW_TOKENS = 16  # "So the answer is <answer> bottom right </answer>." and the end token fit


def get_config():
    c = load_config_file(str(pathlib.Path(__file__).with_name("tiny.py")))
    c = cpu_study(c, stage="study_tiny", tasks=TASKS, seeds=SEEDS, steps=STEPS)
    c.data.synthetic.num_test = NUM_TEST
    c.eval.max_new_tokens = MAX_NEW_TOKENS
    # The projectors and, unlike the paper-size study, the LM head: the tiny LLM is random, and with
    # its random head frozen the adapters barely move the loss (measured, 300 steps of 16 at lr 3e-3:
    # 4.7 -> 4.3 with adapters + projectors, 3.5 -> 0.14 with the head too, from step 25). It trains in every
    # variant (the floor too), so the variants still differ in their adapters only.
    c.study.shared_trainable = (r"^vl_projector\.", r"^al_projector\.", r"^llm\.lm_head\.")
    return c
