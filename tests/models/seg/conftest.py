"""The seg package's fixture model: loaded from the original's checkpoint, one jitted forward.

Every size, sample index, level and task comes from the manifest config, the checkpoint or
the npz key names (a hidden fixture variant has other ones).
"""

import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert.readers import open_tensors
from crab_jax.families.crab.convert.seg_table import seg_table
from crab_jax.models.seg.config import SegConfig
from crab_jax.models.seg.module import SegModule
from crab_jax.models.state_dict import abstract_module, expected_shapes, load_flat
from tests.conftest import PARITY_RTOL


@pytest.fixture(scope="package")
def seg(fixtures_dir, manifest):
    """Model loaded from the fixture, the arrays, and ONE jitted forward on the fixture batch."""
    fx = manifest["fixtures"]["seg_module"]
    cfg = SegConfig.from_dict(fx["config"])
    sd = open_tensors(fixtures_dir / "seg_module" / "seg_module.safetensors")
    # Eager random init compiles one sampler per parameter shape (slow on CPU): build the
    # module abstractly and fill it from the checkpoint.
    model = abstract_module(lambda: SegModule(cfg, rngs=nnx.Rngs(0)))
    load_flat(model, seg_table(cfg).to_jax(sd, expected_shapes(model)))
    arrays = dict(np.load(fixtures_dir / "seg_module" / "seg_module.npz"))

    @nnx.jit
    def forward(model, pred_embeddings, features, is_avss):
        return model(pred_embeddings, features, is_avss, return_intermediates=True)

    features = tuple(arrays[f"image_features_scale{l}"] for l in range(cfg.image_scale_nums))
    out = forward(model, arrays["pred_embeddings"], features, arrays["task_is_avss"])
    # A loose bound for outputs the reference itself only knows to float32 noise: the
    # generator measured float32 vs float64 and suggests this fraction of max|ref|.
    noisy_rtol = max(PARITY_RTOL, fx["suggested_tolerance"]["suggested_atol_relative_to_max_abs_of_reference"])
    w = fx["config"]["loss_weights_used"]
    weights = dict(bce_weight=float(w["bce"]), dice_weight=float(w["dice"]), avss_ce_weight=float(w["avss_ce"]))
    return dict(cfg=cfg, sd=sd, model=model, arrays=arrays, out=out, forward=forward, features=features,
                noisy_rtol=noisy_rtol, loss_weights=weights)
