"""Tiny Crab trained end to end on CPU (the default of ``python -m crab_jax.train``).

Every component is present with widths of a few dozen (``crab_jax.models.presets``);
encoders are random; I-LoRA, projectors and the seg module train on random-but-fixed
batches, so the loss visibly falls within a few dozen steps.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # so `configs` imports from any cwd
from configs import base  # noqa: E402


def get_config():
    c = base.get_config()
    c.stage = "tiny"
    c.model.preset = "tiny"
    c.model.vocab_pad_multiple = 8
    c.trainable = (r"\.lora_(A|B|route)$", r"^vl_projector\.", r"^al_projector\.", r"^seg_module\.")
    c.optim.lr = 3e-3
    c.optim.schedule = "constant"
    c.train.global_batch = 4
    c.train.num_steps = 40
    c.data.source = "random"
    c.data.seq_len = 48
    c.data.num_distinct = 2
    c.checkpoint.every_steps = 20
    c.checkpoint.keep = 2
    c.metrics.router_layer_groups = 2
    return c
