"""Tiny Crab+ trained on CPU: ``python -m crab_jax.train --config configs/crab_plus_tiny.py``.

Model: the ``tiny`` Crab+ thinker (``crab_jax.families.crab_plus.presets``: a 2-layer Qwen2.5
LLM with M-RoPE, a 2-block Qwen2.5-Omni vision tower on 56 px frames, a 2-layer audio tower),
I-LoRA (k = 3 heads + router) in q, k, v, o, gate, up, down of all three towers.

Variants (``--config configs/crab_plus_tiny.py:VARIANT``):

* default (``synthetic``): the built-in synthetic dataset in Crab+'s AV-UIE v2 layout
  (``AVUIE_2/<task>/{train,test}.json``; generated on first use), read, prompted and
  preprocessed exactly as the AV-UIE v2 data (Qwen2.5-Omni chat template, frames per task,
  per-task audio crops, Whisper features, labels on the assistant turn), tasks AVQA, AVE, S4
  (box + points) and KS, a word tokenizer built from its texts. The I-LoRA weights train and,
  unlike the released recipe (``configs/crab_plus_tpu_v4.py``: adapters only), so does the LM
  head: with a frozen *random* head of width 32 the logits' range is bounded and an
  adapters-only tiny model barely moves (5.99 -> 5.55 in 200 steps); with the head the loss
  falls 4.75 -> 0.39 in 200 steps (~2 min on 2 cores). Held-out generation at the end is
  scored per task against the media-blind chance level.
* ``random``: the ``random`` source (well-formed Crab+ batches of random ids, an image or a
  video of up to ``data.frame_slots`` frames and ``data.audio_slots`` seconds of audio),
  ``data.num_distinct`` fixed batches cycled, only the I-LoRA weights train (the released
  recipe's trainable set); no held-out split.
"""

from crab_jax.config.schema import get_config as base_config

LORA = r"\.lora_(A|B|route)$"  # the I-LoRA weights of the LLM, vision and audio towers


def _common():
    c = base_config()
    c.stage = "crab_plus_tiny"
    c.model.family = "crab_plus"
    c.model.preset = "tiny"
    c.model.vocab_pad_multiple = 8
    c.model.seg_branch = False            # Crab+ has no mask branch: SAM2 turns its boxes into masks
    c.optim.lr = 1e-2
    c.optim.schedule = "constant"
    c.train.global_batch = 8
    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 2
    c.metrics.log_every = 10
    c.metrics.router_layer_groups = 2
    return c


def get_config(variant: str = "synthetic"):
    c = _common()
    if variant == "synthetic":
        c.model.base_vocab = -1           # from the synthetic dataset's word tokenizer
        c.trainable = (LORA, r"^lm_head\.")
        c.train.num_steps = 200
        c.data.source = "synthetic"
        c.data.tasks = ("avqa", "ave", "s4", "ks")
        c.data.synthetic.num_train = 64
        c.data.synthetic.num_test = 16
        c.data.seq_len = 512              # one bucket: every synthetic sample fits (video 5 slices, 10 s audio)
        c.eval.batch_size = 16
        c.eval.max_new_tokens = 40        # the longest target (S4: category, box and three points) fits
    elif variant == "random":
        c.trainable = (LORA,)
        c.train.num_steps = 300
        c.data.source = "random"
        c.data.tasks = ("ave", "avqa", "s4")
        # 4 frames = 2 temporal slices x 4 tokens, 1 s of audio = 7 chunk slots / 25 tokens; 64 tokens
        # leave room for a prompt and an answer of a few dozen tokens next to the media.
        c.data.frame_slots = 4
        c.data.audio_slots = 1
        c.data.seq_len = 64
        c.data.num_distinct = 2
        c.eval.at_end = False
    else:
        raise ValueError(f"configs/crab_plus_tiny.py: unknown variant {variant!r}; known: synthetic, random")
    return c
