"""The paper's recipe on a TPU v4 slice: LLaMA-2-7B-chat + CLIP ViT-L/14 (taps 14, 22, 23) + BEATs,
Q-Formers with 32 queries, I-LoRA k=3 r=8 alpha=16 dropout 0.05 on q,k,v,o,gate,up,down.

Variant (``--config configs/tpu_v4.py:STAGE[,cosine][,packed]``): STAGE is one of
``pretrain_visual, pretrain_audio, pretrain_seg, finetune`` (default), ``avs``
(``crab_jax.families.crab.recipes.STAGES``). The schedule is the one the original actually ran:
its DeepSpeed config's WarmupDecayLR (log warmup over 3% of the steps, linear decay to 0)
overrides the ``--lr_scheduler_type cosine`` flag; ``,cosine`` selects that flag's schedule
instead. lr 1e-4, weight decay 0, AdamW (0.9, 0.999, 1e-8), clip 1.0, 10 frames. ``,packed``
packs the samples into the 2048-token rows (``crab_jax.families.crab.recipes.apply_packing``:
~4 samples a row, so the global batch is 64 rows, one micro-batch on v4-32).
Weights come from a converted checkpoint: ``--config.model.init_checkpoint=DIR``.
"""

from crab_jax.families.crab.recipes import paper_config


def get_config(variant: str = "finetune"):
    c = paper_config(variant)
    # A v4 slice: shard weights over every chip (fsdp); LoRA keeps the optimizer state tiny.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    # Global batch 256 on v4-32 (16 chips): 4 micro-batches of 4 samples per chip fit in 32 GiB
    # (`python -m crab_jax.aot_compile --topology v4-32`: 29.9 GiB/chip); v4-8 needs 16.
    c.train.micro_batches = 1 if int(c.data.packing.seq_len) else 4  # packed: 64 rows = 4 per chip
    return c
