"""The paper's recipe on ONE H100 / H200: bf16 frozen weights (~14 GB for the 7B LLM),
scanned + rematerialised layers, and gradient accumulation to the global batch.

Variant as in ``configs/tpu_v4.py`` (``STAGE[,cosine]``).
"""

from crab_jax.families.crab.recipes import paper_config

MICRO_BATCH = 4  # samples per forward/backward on one 80 GB GPU at 2048 tokens


def get_config(variant: str = "finetune"):
    c = paper_config(variant)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    c.train.micro_batches = max(1, c.train.global_batch // MICRO_BATCH)
    return c
