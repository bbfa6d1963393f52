"""The original Crab's training recipes: its stages and the paper's model / optimizer settings.

``configs/tpu_v4.py`` and ``configs/gpu.py`` build on :func:`paper_config`; the values come from
the original's scripts (``../shared/spec/tasks.md`` A.7.1).
"""

from __future__ import annotations

import ml_collections

from crab_jax.config.schema import get_config
from crab_jax.models.ilora import DEFAULT_TARGETS

# Trainable-parameter regexes (re.search over dotted crab_jax paths such as
# ``llm.model.layers.0.self_attn.q_proj.lora_A``), one list per stage of the original.
STAGES = {
    # P1 visual pretraining: the Q-Former projector, plus lm_head / the resized embeddings.
    # The pretraining scripts run with --lora_enable False: no adapters in the model (lora=False).
    "pretrain_visual": dict(trainable=(r"^vl_projector\.", r"^llm\.lm_head\.", r"^llm\.model\.embed_tokens\."),
                            global_batch=64, epochs=1, seg_branch=False, tasks=("image_caption", "video_caption"),
                            lora=False),
    # P2 audio pretraining.
    "pretrain_audio": dict(trainable=(r"^al_projector\.", r"^llm\.lm_head\.", r"^llm\.model\.embed_tokens\."),
                           global_batch=32, epochs=1, seg_branch=False, tasks=("audio_caption",), lora=False),
    # P3 segmentation pretraining on LVIS (objects of area >= 1000, the lvis_seg reader): the seg
    # module only; the script's 128 queries / 128 px.
    "pretrain_seg": dict(trainable=(r"^seg_module\.",), global_batch=64, epochs=5, seg_branch=True,
                         tasks=("lvis_seg",), avs_query_num=128, low_res_mask_size=128, lora=False),
    # F1 joint instruction tuning: projectors + every I-LoRA weight (A, B heads, router).
    "finetune": dict(trainable=(r"^vl_projector\.", r"^al_projector\.", r"\.lora_(A|B|route)$"),
                     global_batch=256, epochs=5, seg_branch=False,
                     tasks=("avqa", "ave", "avvp", "arig", "avcap", "ms3", "s4", "avss", "ref-avs")),
    # F2 AVS fine-tuning: seg module + embeddings + LM head.
    "avs": dict(trainable=(r"^seg_module\.", r"^llm\.model\.embed_tokens\.", r"^llm\.lm_head\."),
                global_batch=256, epochs=30, seg_branch=True, tasks=("ms3", "s4", "ref-avs"),
                avs_query_num=300, low_res_mask_size=112),
}


def apply_stage(c: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """Sets the trainable set, batch, epochs, tasks and seg sizes of one stage of the original."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
    s = STAGES[stage]
    c.stage = stage
    c.trainable = s["trainable"]
    c.train.global_batch = s["global_batch"]
    c.train.epochs = s["epochs"]
    c.model.seg_branch = s["seg_branch"]
    c.data.tasks = s["tasks"]
    c.model.avs_query_num = s.get("avs_query_num", -1)
    c.model.low_res_mask_size = s.get("low_res_mask_size", -1)
    if not s.get("lora", True):
        c.model.lora.targets = ()
    return c


def paper_model(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's model (LLaMA-2-7B-chat + CLIP ViT-L/14 + BEATs, I-LoRA k=3 r=8 alpha=16
    dropout 0.05 on every projection), optimizer and data sizes; bf16 compute, fp32 trainables."""
    c.model.preset = "crab_7b"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.frozen_param_dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.model.vocab_pad_multiple = 128
    c.model.lora.r = 8
    c.model.lora.alpha = 16.0
    c.model.lora.num_heads = 3
    c.model.lora.dropout = 0.05
    c.model.lora.targets = DEFAULT_TARGETS
    c.optim.lr = 1e-4
    c.optim.schedule = "warmup_decay_log"
    c.optim.warmup_ratio = 0.03
    c.optim.weight_decay = 0.0
    c.data.source = "grain"
    c.data.seq_len = 2048
    c.data.frame_slots = 0    # sized from the stage's tasks (Ref-AVS test prompts show 11 frames)
    c.data.audio_slots = 0
    c.data.fbank_frames = 98   # 1-s segments at a 10 ms hop
    c.metrics.router_layer_groups = 4
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3
    return c


# ``,packed``: sequence packing into the recipe's 2048-token rows (crab_jax.data.pipeline.buckets).
# AV-UIE's samples are ~300-750 tokens (10 frames + 10 audio seconds each), so a row holds ~4:
# the global batch counts rows, a quarter of the recipe's samples, so a step sees about as many
# samples as the original's; a row's media buffer holds 4 samples' frames and audio seconds.
PACK_SAMPLES_PER_ROW = 4
PACK_MEDIA_PER_ROW = 40


def apply_packing(c: ml_collections.ConfigDict) -> None:
    if c.model.seg_branch:
        raise ValueError(f"config variant option 'packed': stage {c.stage!r} trains masks on every sample "
                         "(the seg branch), which never pack; use it with finetune")
    c.data.packing.seq_len = int(c.data.seq_len)
    c.data.packing.samples = 2 * PACK_SAMPLES_PER_ROW
    c.data.packing.frame_slots = c.data.packing.audio_slots = PACK_MEDIA_PER_ROW
    c.train.global_batch = max(1, int(c.train.global_batch) // PACK_SAMPLES_PER_ROW)


OPTIONS = {"cosine": lambda c: setattr(c.optim, "schedule", "cosine"), "packed": apply_packing}


def paper_config(variant: str = "finetune") -> ml_collections.ConfigDict:
    """``STAGE[,cosine][,packed]``: the paper's model with one stage's values (see ``configs/tpu_v4.py``)."""
    parts = [p for p in (variant or "finetune").split(",") if p]
    c = paper_model(get_config())
    apply_stage(c, parts[0])
    for extra in parts[1:]:
        if extra not in OPTIONS:
            raise ValueError(f"config variant {variant!r}: unknown option {extra!r} (known: {', '.join(OPTIONS)})")
        OPTIONS[extra](c)
    return c
