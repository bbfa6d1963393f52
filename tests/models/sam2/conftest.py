"""The SAM 2 tests' reference: HF ``Sam2Model`` built from the tiny preset, weights redrawn so
no term is trivially small, loaded into :class:`Sam2ImageModel` through the mapping table."""

import dataclasses
import re

import numpy as np
import pytest
from flax import nnx

from crab_jax.checkpoints.convert.tables.sam2 import sam2_table
from crab_jax.models.sam2.config import Sam2Config, tiny
from crab_jax.models.sam2.model import Sam2ImageModel
from crab_jax.models.state_dict import abstract_module, expected_shapes, load_flat

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


# Learned tables (embeddings, tokens, positional tables): drawn at O(0.5) like biases.
_TABLES = re.compile(r"(pos_embed|pos_embed_window|no_memory_embedding|_embed\.weight|_tokens?\.weight)$")


def randomize(model, seed: int) -> None:
    """Norms near 1 / 0, embeddings and biases O(0.5), matrices ~ 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            elif p.ndim <= 1 or _TABLES.search(name):
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / np.sqrt(p[0].numel()))
        for name, b in model.named_buffers():
            if name.endswith("positional_embedding"):
                b.copy_(torch.randn(b.shape, generator=g))


def hf_model(cfg: Sam2Config, seed: int = 0):
    hf_cfg = transformers.Sam2Config(**cfg.to_hf())
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.Sam2Model(hf_cfg).eval()
    randomize(model, seed)
    return model


def state_dict(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def nnx_model(cfg: Sam2Config, sd: dict) -> Sam2ImageModel:
    model = abstract_module(lambda: Sam2ImageModel(cfg, rngs=nnx.Rngs(0)))
    load_flat(model, sam2_table(cfg).to_jax(sd, expected_shapes(model)))
    return model


@dataclasses.dataclass
class Pair:
    cfg: Sam2Config
    hf: object
    sd: dict
    model: Sam2ImageModel


@pytest.fixture(scope="package")
def pair() -> Pair:
    cfg = tiny()
    hf = hf_model(cfg)
    sd = state_dict(hf)
    return Pair(cfg, hf, sd, nnx_model(cfg, sd))


def hf_pixels(image: np.ndarray, cfg: Sam2Config):
    """SAM2Transforms on float images: ToTensor (/255), Resize (torchvision's bilinear with
    antialias on a float tensor), Normalize -> ``[b, 3, S, S]``."""
    x = torch.from_numpy(image.astype(np.float32)).permute(0, 3, 1, 2) / 255.0
    x = torch.nn.functional.interpolate(x, (cfg.image_size,) * 2, mode="bilinear", align_corners=False,
                                        antialias=True)
    mean = torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std).view(1, 3, 1, 1)
    return (x - mean) / std
