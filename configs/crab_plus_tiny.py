"""Tiny Crab+ trained on CPU: ``python -m crab_jax.train --config configs/crab_plus_tiny.py``.

Model: the ``tiny`` Crab+ thinker (``crab_jax.families.crab_plus.presets``: a 2-layer Qwen2.5
LLM with M-RoPE, a 2-block Qwen2.5-Omni vision tower on 56 px frames, a 2-layer audio tower),
I-LoRA (k = 3 heads + router) in q, k, v, o, gate, up, down of all three towers. Only the
adapters train (``lora_A`` / ``lora_B`` / ``lora_route`` of every tower); the random base
weights stay frozen, as the released recipe freezes Qwen2.5-Omni.

Data: the ``random`` source (well-formed Crab+ samples: a prompt with an image or a video of
up to ``data.frame_slots`` frames and up to ``data.audio_slots`` seconds of audio, an answer
ending in ``<|im_end|>``, labels on the answer). ``data.num_distinct`` fixed batches are
cycled, so the adapters can memorise them: on 2 CPU cores the loss falls from ~4.40 (ln of
the 86-token vocabulary: chance) to ~3.84 in 300 steps, ~30 s with the compile. It levels off
there because the frozen random LM head (std 0.02, hidden 32) bounds the logits' range, not
because the adapters stop learning. AV-UIE v2 records (real or synthetic) are the next step; the random
source has no held-out split, so there is no evaluation at the end.
"""

from crab_jax.config.schema import get_config as base_config


def get_config():
    c = base_config()
    c.stage = "crab_plus_tiny"
    c.model.family = "crab_plus"
    c.model.preset = "tiny"
    c.model.vocab_pad_multiple = 8
    c.model.seg_branch = False            # Crab+ has no mask branch (SAM2 comes later)
    c.trainable = (r"\.lora_(A|B|route)$",)  # the I-LoRA weights of the LLM, vision and audio towers
    c.optim.lr = 1e-2
    c.optim.schedule = "constant"
    c.train.global_batch = 8
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
    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 2
    c.metrics.log_every = 10
    c.metrics.router_layer_groups = 2
    return c
