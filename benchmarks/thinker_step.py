"""Crab+ thinker train step: I-LoRA in all three towers vs in the LLM only vs the frozen model.

    python -m benchmarks.thinker_step            # CPU: the tiny preset widened (defaults below), fp32
    python -m benchmarks.thinker_step --config configs/crab_plus_tpu_v4.py --config.train.micro_batches=1 \\
        --batch 2 --seq_len 2048 --frames 10 --audio_seconds 10 --dtype bfloat16 --steps 5
                                                 # one H100 / H200: the crab_plus_7b thinker, the recipe

THE train step of the trainer (``crab_jax.training.step``: forward, loss, backward, AdamW,
donated state) of three thinkers that differ only in their adapters, on the same random
batch (``data.source='random'``: a prompt, ``--frames`` frames at the model's frame size,
``--audio_seconds`` of audio, an answer):

  ilora      I-LoRA (the config's r / alpha / dropout / k heads + router) in q,k,v,o,gate,up,down
             of the LLM, the vision and the audio tower; only the adapters train (the recipe,
             ``crab_jax.families.crab_plus.recipes``)
  ilora_llm  the same adapter in the LLM only (``CrabPlusConfig.lora_towers=("text",)``): the
             vision and audio towers are plain and run forward only
  frozen     no adapters anywhere. Something must train for the step to be a train step (AdamW,
             a gradient): the trainable set is the LLM's final RMSNorm weight
             (``model.norm.weight``, 1 x hidden), so the backward is the LM head's and the norm's
             only — no gradient flows into any decoder layer or tower. This is the floor: the
             forward of the three towers + the loss + the cheapest possible update, what the
             adapters' backward and their own matmuls are measured against.

The ratios are to ``ilora_llm`` (the cheaper trained variant, as Crab's benchmark divides by
plain LoRA): ``ilora`` / ``ilora_llm`` is what the tower adapters cost, ``frozen`` /
``ilora_llm`` how much of the step is the forward.

CPU shapes ("tiny but wide", the defaults): the ``tiny`` preset with an LLM of ``--hidden``
(heads of 64, 4 query heads per KV head, the 7B's MLP ratio 18944 / 3584 and M-RoPE split
scaled to the head), ``--layers`` layers; vision and audio towers narrow (``--vision_hidden`` /
``--audio_hidden``, heads of 64, 2 blocks / layers) but with the real geometry: 224 px frames
(14 px patches, 2 x 2 merge, 112 px windows: 256 patches, 64 LLM tokens a temporal slice) and
2-s audio chunks of 128-bin mel (``n_window`` 100, 25 tokens a second); the vocabulary stays
the tiny preset's (the 7B's 152064 rows would make the LM head most of a tiny model).
Layers are not scanned and not rematted (the config's ``model.scan_layers`` / ``remat``).

Timing, peak, MFU and the table: :mod:`benchmarks.step_timing` (shared with Crab's
``benchmarks/train_step.py``). MFU divides the family's model FLOPs
(``crab_jax.families.crab_plus.flops.thinker_flops``); one caveat: it counts the LLM's
backward for every variant (right for the adapters, ~2x too much for ``frozen``, whose
backward stops at the final norm). ``XLA-counted MFU`` (XLA's own FLOP count of the compiled
step) has no such caveat.
"""

from __future__ import annotations

import dataclasses

from benchmarks.step_timing import Runner, benchmark as time_benchmark, run_cli

VARIANTS = ("ilora", "ilora_llm", "frozen")
REF = "ilora_llm"
ADAPTERS = (r"\.lora_(A|B|route)$",)  # the recipe's trainable set (recipes.TRAINABLE)
FINAL_NORM = (r"^model\.norm\.weight$",)  # the frozen variant's one trainable tensor
# The released 7B's ratios the widened tiny preset keeps (presets.paper_thinker_config).
MLP_RATIO = {"text": 18944 / 3584, "vision": 3420 / 1280}
MROPE_7B, HEAD_DIM_7B = (16, 24, 24), 128


def variant_config(base, variant: str):
    """The run config of ``variant``: its trainable set (the model side: :func:`variant_model`)."""
    c = base.copy_and_resolve_references()
    c.trainable = FINAL_NORM if variant == "frozen" else ADAPTERS
    return c


def variant_model(cfg, variant: str):
    """``cfg`` (the recipe: I-LoRA in every tower) with ``variant``'s adapters."""
    from crab_jax.families.crab_plus.model import LORA_TOWERS

    if variant == "frozen":
        return dataclasses.replace(cfg, lora=None)
    return dataclasses.replace(cfg, lora_towers=("text",) if variant == "ilora_llm" else LORA_TOWERS)


def wide_tiny_config(config, args):
    """The ``tiny`` preset widened (module docstring) with the run's options (dtype, adapter, ...)."""
    from crab_jax.config.sections import RunConfig
    from crab_jax.families.crab_plus.presets import apply_run_options, tiny_thinker_config
    from crab_jax.models.qwen_audio import QwenAudioConfig

    cfg = tiny_thinker_config()
    heads = args.hidden // 64
    text = dataclasses.replace(
        cfg.text, hidden_size=args.hidden, intermediate_size=int(args.hidden * MLP_RATIO["text"]) // 8 * 8, num_hidden_layers=args.layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), head_dim=64,
        mrope_section=tuple(s * 64 // HEAD_DIM_7B for s in MROPE_7B))
    depth = 2
    vision = dataclasses.replace(
        cfg.vision, depth=depth, hidden_size=args.vision_hidden, num_heads=args.vision_hidden // 64,
        intermediate_size=int(args.vision_hidden * MLP_RATIO["vision"]) // 2 * 2, window_size=112,
        fullatt_block_indexes=(depth - 1,), out_hidden_size=args.hidden)
    audio = QwenAudioConfig(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=args.audio_hidden // 64,
                            encoder_ffn_dim=4 * args.audio_hidden, d_model=args.audio_hidden,
                            max_source_positions=1500, n_window=100, output_dim=args.hidden)
    cfg = dataclasses.replace(cfg, text=text, vision=vision, audio=audio, frame_size=224)
    return apply_run_options(cfg, RunConfig.from_config(config).model)


def thinker_config(config, args):
    """The run's CrabPlusConfig: the widened tiny preset, or the config's preset (crab_plus_7b)."""
    from crab_jax.training.setup import resolve, run_model_config

    if config.model.preset != "tiny":
        return run_model_config(*resolve(config))
    return wide_tiny_config(config, args)


def benchmark(base, args) -> dict:
    """``base``: the run config (any ``--config.x=y`` applied); ``args``: the benchmark's own flags."""
    base.data.source = "random"
    base.data.seq_len = args.seq_len
    base.data.frame_slots = args.frames
    base.data.audio_slots = args.audio_seconds
    base.train.global_batch = args.batch
    base.eval.at_end = False
    if args.dtype:
        base.model.dtype = args.dtype
        base.model.frozen_param_dtype = args.dtype  # trainable weights keep model.param_dtype (fp32)

    def make(variant: str) -> Runner:
        config = variant_config(base, variant)
        return Runner(config, variant_model(thinker_config(config, args), variant), variant)

    return time_benchmark(base, make, args.variants, args.steps, REF, batch=args.batch, seq_len=args.seq_len,
                          frames=args.frames, audio_seconds=args.audio_seconds, dtype=str(base.model.dtype))


def _thinker_flags(flags) -> dict:
    return dict(
        frames=flags.DEFINE_integer("frames", 4, "Video frames per sample (2 per temporal slice)."),
        audio_seconds=flags.DEFINE_integer("audio_seconds", 3, "Seconds of audio per sample."),
        dtype=flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute and frozen-weight dtype "
                                "(default: the config's; trainable weights stay model.param_dtype)."),
        vision_hidden=flags.DEFINE_integer("vision_hidden", 128, "Tiny preset only: vision tower width."),
        audio_hidden=flags.DEFINE_integer("audio_hidden", 128, "Tiny preset only: audio tower width."))


if __name__ == "__main__":
    run_cli(default_config="configs/crab_plus_tiny.py", variants=VARIANTS, batch=2, seq_len=512, steps=20,
            extra_flags=_thinker_flags, run=benchmark,
            title=lambda out: (f"Crab+ thinker train step, {out['dtype']}, batch {out['batch']} x {out['seq_len']} "
                               f"tokens, {out['frames']} frames + {out['audio_seconds']} s audio a sample"))
