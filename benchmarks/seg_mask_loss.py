"""Crab's mask branch: the seg module + mask loss, forward + backward, decoding every sample
(the original's way, ``model.seg_chunk=0``) vs only the segmentation samples (``seg_chunk=k``),
as ratios measured in one run.

    python -m benchmarks.seg_mask_loss                          # the crab_full fixture's seg sizes
    python -m benchmarks.seg_mask_loss --preset paper --batch 8 --seg-samples 2 --chunk 1 2
    python -m benchmarks.seg_mask_loss --parts                  # + the resize and CE kernels, before / now

Sizes: ``--preset`` (``--queries`` overrides the query count); inputs are random, ``--seg-samples`` of the ``--batch``
samples are binary-mask samples (``--avss`` of them AVSS). Every variant is jitted and its
repetitions interleaved with the others'; the mask loss of each variant is printed next to the
full decode's (they must agree).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from crab_jax.families.crab.model import decode_masks
from crab_jax.families.crab.presets import paper_crab_config, tiny_crab_config
from crab_jax.models.rngs import make_rngs
from crab_jax.models.seg.config import SegConfig
from crab_jax.models.seg.losses import combine_mask_terms, mask_loss_terms
from crab_jax.models.seg.module import SegModule
from crab_jax.models.seg.resize import _resize_axis as resize_axis
from crab_jax.models.seg.resize import resize_bilinear

FIXTURES = pathlib.Path(os.environ.get("CRAB_FIXTURES", pathlib.Path(__file__).resolve().parents[2] / "shared"
                                      / "fixtures" / "crab"))


def seg_config(preset: str, fixtures: pathlib.Path) -> SegConfig:
    """``fixture``: the crab_full fixture's seg module (its manifest's sizes, as ``to-jax`` reads
    them: the LLM width as ``d_model``, the CLIP width as ``vit_dim``); ``paper``: Crab-7B's;
    ``tiny``: the tiny preset's."""
    if preset == "tiny":
        return tiny_crab_config().seg
    if preset == "paper":
        return paper_crab_config().seg
    with open(fixtures / "manifest.json") as f:
        config = json.load(f)["fixtures"]["crab_full"]["config"]
    seg = config["seg"]
    return SegConfig.from_dict(dict(seg, d_model=config["llama_config"]["hidden_size"],
                                    vit_dim=seg["vit_image_embedding_dim"]))


def timed(fns: dict, args: tuple, repeats: int) -> dict[str, float]:
    """Median seconds of each jitted ``fn(*args)``, the repetitions interleaved."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def parts(cfg: SegConfig, b: int, repeats: int) -> None:
    """The two kernels the mask branch's backward was made of, before / now, at the seg module's
    largest maps (``[b, 224, 224, K]``): the 2x bilinear resize (autodiff's scatter-add transpose of
    its gathers vs the hand-written gather VJP) and the AVSS cross-entropy (gather over the NCHW
    class axis vs the one-hot select, classes last)."""
    size, low, k = cfg.image_size, cfg.low_res_mask_size, cfg.avss_classes
    keys = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(keys[0], (b, low, low, k))
    cot = jax.random.normal(keys[1], (b, size, size, k))
    plain = lambda x: resize_axis.fun(resize_axis.fun(x, size, 2), size, 1)  # the undecorated gathers
    grad_of = lambda f: jax.jit(lambda x, c: jax.vjp(f, x)[1](c)[0])
    resize = timed({"before": grad_of(plain), "now": grad_of(lambda x: resize_bilinear(x, (size, size)))}, (x, cot),
                   repeats)

    logits = jax.random.normal(keys[2], (b, size, size, k))
    labels = jnp.floor(jax.random.uniform(keys[0], (b, 1, size, size)) * k)
    is_avss = jnp.ones((b,), bool)

    def gather_ce(logits_nhwc):
        logp = jax.nn.log_softmax(jnp.moveaxis(logits_nhwc, -1, 1), axis=1)
        return -jnp.take_along_axis(logp, labels.astype(jnp.int32), axis=1).mean()

    def ours(logits_nhwc):
        binary = jnp.zeros((b, 1, size, size))
        return mask_loss_terms(binary, jnp.moveaxis(logits_nhwc, -1, 1), labels, is_avss, is_avss)[:, 2].sum()

    ce = timed({"before": jax.jit(jax.value_and_grad(gather_ce)), "now": jax.jit(jax.value_and_grad(ours))},
               (logits,), repeats)
    print(f"kernels at [{b}, {size}, {size}, {k}], forward + backward, medians of {repeats} interleaved reps")
    print("| kernel | before | now | speed-up |")
    print("|---|---|---|---|")
    for name, t in ((f"resize {low} -> {size}", resize), ("AVSS cross-entropy", ce)):
        print(f"| {name} | {1e3 * t['before']:.1f} ms | {1e3 * t['now']:.1f} ms | {t['before'] / t['now']:.1f}x |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("fixture", "paper", "tiny"), default="fixture",
                   help="seg module sizes (default: the crab_full fixture's, the vs_torch model)")
    p.add_argument("--fixtures", default=str(FIXTURES))
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seg-samples", type=int, default=1)
    p.add_argument("--avss", type=int, default=0, help="how many of the seg samples are AVSS")
    p.add_argument("--chunk", type=int, nargs="+", default=[1], help="seg_chunk values to time against 0")
    p.add_argument("--queries", type=int, default=0, help="override avs_query_num")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--parts", action="store_true", help="also time the resize and the AVSS CE, before / now")
    a = p.parse_args(argv)
    if not 0 <= a.avss <= a.seg_samples <= a.batch:
        p.error("need 0 <= --avss <= --seg-samples <= --batch")
    cfg = seg_config(a.preset, pathlib.Path(a.fixtures))
    if a.queries:
        cfg = dataclasses.replace(cfg, avs_query_num=a.queries)
    if a.parts:
        parts(cfg, a.batch, a.repeats)
    graph, params, rest = nnx.split(SegModule(cfg, rngs=make_rngs(0)), nnx.Param, ...)
    keys = jax.random.split(jax.random.key(1), 3)
    b, patches = a.batch, cfg.image_embedding_size ** 2
    is_seg = jnp.arange(b) >= b - a.seg_samples  # the seg samples last: the sort has work to do
    is_avss = is_seg & (jnp.arange(b) >= b - a.avss)
    pred = jax.random.normal(keys[0], (b, cfg.image_scale_nums * cfg.token_nums_per_scale, cfg.d_model))
    features = [jax.random.normal(k, (b, patches, cfg.vit_dim)) for k in jax.random.split(keys[1], cfg.image_scale_nums)]
    gt = jax.random.uniform(keys[2], (b, 1, cfg.image_size, cfg.image_size))
    gt = jnp.where(is_avss[:, None, None, None], jnp.floor(gt * 3), (gt > 0.5).astype(jnp.float32))

    def step(chunk):
        def loss(params):
            model = nnx.merge(graph, params, rest)
            _, _, terms = decode_masks(model, pred, features, is_avss, is_seg, gt, chunk)
            return combine_mask_terms(terms, is_avss, is_seg)
        return jax.jit(jax.value_and_grad(loss))

    variants = {0: step(0), **{c: step(c) for c in a.chunk}}
    losses = {c: float(jax.block_until_ready(fn(params))[0]) for c, fn in variants.items()}
    times = timed(variants, (params,), a.repeats)
    print(f"seg module C={cfg.prompt_embed_dim}, {cfg.avs_query_num} queries, {cfg.image_size} px, "
          f"{cfg.avss_classes} AVSS classes; batch {b}, {a.seg_samples} seg samples ({a.avss} AVSS); "
          f"medians of {a.repeats} interleaved reps on {jax.default_backend()}")
    print("| seg_chunk | what is decoded | mask loss | fwd + bwd | vs every sample |")
    print("|---|---|---|---|---|")
    base = times[0]
    for c in variants:
        t = times[c]
        what = "every sample (original)" if c == 0 else f"seg samples, {c} per call"
        print(f"| {c} | {what} | {losses[c]:.7f} | {1e3 * t:.1f} ms | {base / t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
