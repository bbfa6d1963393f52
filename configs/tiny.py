"""Tiny Crab trained end to end on CPU (the default of ``python -m crab_jax.train``).

Data: the built-in synthetic audio-visual dataset (``crab_jax.data.synthetic.generate``), generated on
the first run under ``~/.cache/crab_jax/synthetic/`` (``data.path`` to choose), with a word
tokenizer built from its texts; the model's vocabulary follows that tokenizer. Tasks: AVQA,
AVE and S4 (the S4 answer names the sounding object; ARIG's pixel boxes would need a
number-aware tokenizer).

Model: every Crab component with widths of a few dozen (``crab_jax.families.crab.presets``); the
random CLIP / BEATs encoders stay frozen, everything after them trains (Q-Former
projectors, the whole small LLM with its I-LoRA heads, the seg module).

At the end the run generates answers for the held-out clips and prints each task's metric
next to its chance level (the best media-blind answer): on 2 CPU cores the whole command,
dataset and compiles included, takes a few minutes.
"""

from crab_jax.config.schema import get_config as base_config


def get_config():
    c = base_config()
    c.stage = "tiny"
    c.model.preset = "tiny"
    c.model.vocab_pad_multiple = 8
    c.model.base_vocab = -1          # from the synthetic dataset's word tokenizer
    c.model.seg_branch = False       # S4 is scored on its text (the object named); no mask loss
    c.trainable = (r"^llm\.", r"^vl_projector\.", r"^al_projector\.")
    c.optim.lr = 3e-3
    # Constant: the answer templates are learnt in ~150 steps, the media-dependent words
    # (which object sounds, when, where) only later; a decaying rate stalls them.
    c.optim.schedule = "constant"
    c.train.global_batch = 16
    c.train.num_steps = 700
    c.data.source = "synthetic"
    c.data.tasks = ("avqa", "ave", "s4")
    c.data.synthetic.num_train = 256
    c.data.synthetic.num_test = 64
    c.data.seq_len = 112             # every synthetic AVQA / AVE / S4 sample fits (73-104 tokens)
    c.data.frame_slots = 10
    c.data.audio_slots = 10
    c.eval.batch_size = 32
    c.eval.max_new_tokens = 40       # the longest answer (S4: 33 words + 8 mask tokens) fits
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 2
    c.metrics.log_every = 10
    c.metrics.router_layer_groups = 2
    return c
