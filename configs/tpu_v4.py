"""The paper's recipe on a TPU v4 slice: LLaMA-2-7B-chat + CLIP ViT-L/14 (taps 14, 22, 23) + BEATs,
Q-Formers with 32 queries, I-LoRA k=3 r=8 alpha=16 dropout 0.05 on q,k,v,o,gate,up,down.

Variant (``--config configs/tpu_v4.py:STAGE[,cosine]``): STAGE is one of
``pretrain_visual, pretrain_audio, pretrain_seg, finetune`` (default), ``avs``
(``configs/base.py`` STAGES). The schedule is the one the original actually ran: its DeepSpeed
config's WarmupDecayLR (log warmup over 3% of the steps, linear decay to 0) overrides the
``--lr_scheduler_type cosine`` flag; ``,cosine`` selects that flag's schedule instead.
lr 1e-4, weight decay 0, AdamW (0.9, 0.999, 1e-8), clip 1.0, 10 frames.
Weights come from a converted checkpoint: ``--config.model.init_checkpoint=DIR``.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def paper_model(c):
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
    c.model.lora.targets = base.ILORA_TARGETS
    c.optim.lr = 1e-4
    c.optim.schedule = "warmup_decay_log"
    c.optim.warmup_ratio = 0.03
    c.optim.weight_decay = 0.0
    c.data.source = "grain"
    c.data.seq_len = 2048
    c.data.frame_slots = 10
    c.data.audio_slots = 10
    c.data.fbank_frames = 98   # 1-s segments at a 10 ms hop
    c.metrics.router_layer_groups = 4
    return c


def get_config(variant: str = "finetune"):
    parts = [p for p in (variant or "finetune").split(",") if p]
    stage = parts[0]
    c = paper_model(base.get_config())
    base.apply_stage(c, stage)
    for extra in parts[1:]:
        if extra != "cosine":
            raise ValueError(f"configs/tpu_v4.py: unknown variant option {extra!r} (known: cosine)")
        c.optim.schedule = "cosine"
    # A v4 slice: shard weights over every chip (fsdp); LoRA keeps the optimizer state tiny.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    # Global batch 256 on v4-32 (16 chips): 4 micro-batches of 4 samples per chip fit in 32 GiB
    # (`python -m crab_jax.aot_compile --topology v4-32`: 29.9 GiB/chip); v4-8 needs 16.
    c.train.micro_batches = 4
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3
    return c
