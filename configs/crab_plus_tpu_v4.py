"""Crab+'s released recipe on a TPU v4 slice: the Qwen2.5-Omni-7B thinker (28-layer LLM, 32-block
vision tower, 32-layer audio tower) with I-LoRA r=128 alpha=256 dropout 0.1, 3 heads, on
q,k,v,o,gate,up,down of every tower; only the adapters train.

``crab_jax.families.crab_plus.recipes.paper_config``: lr 1e-4, cosine with warmup ratio 0.03,
weight decay 0, 5 epochs, bf16, remat (gradient checkpointing) and scanned layers; global
batch 256 x 2048 tokens with 10 frames at 224 px and 10 s of audio per sample (AV-UIE v2's
video tasks). Weights come from a converted checkpoint: ``--config.model.init_checkpoint=DIR``
(``python -m tools.convert_weights --family crab_plus to-jax --tokenizer ...``); data: AV-UIE v2
under ``--config.data.path=ROOT`` (``ROOT/AVUIE_2/<task>/train.json``, all 19 tasks) with
``--config.data.tokenizer=DIR/tokenizer``; ``--config.data.source=random`` trains on random
batches of the AOT shapes instead.
"""

from crab_jax.families.crab_plus.recipes import paper_config


def get_config():
    c = paper_config()
    # A v4 slice: shard every weight over every chip (fsdp); LoRA keeps the optimizer state small.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    # Global batch 256 on v4-32 (16 chips): 8 micro-batches of 2 samples per chip need 28.5 GiB
    # of the 32 GiB HBM, 16 micro-batches of 1 sample 16.9 GiB (`python -m crab_jax.aot_compile
    # --config configs/crab_plus_tpu_v4.py --topology v4-32`, docs/benchmarks.md "Crab+ AOT").
    # Other slices: micro_batches = global_batch / (2 x chips).
    c.train.micro_batches = 8
    return c
