"""Decoded samples/s per data worker, and how many workers keep one accelerator host fed.

Decodes real example media (``../shared/media``: the AVE 10-s mp4 + mp3, the S4 frame +
wav + mask) exactly as the training pipeline does (:func:`crab_jax.families.crab.examples.build_example`:
10 CLIP-size frames or one image, per-segment BEATs fbank, tokens, GT mask) plus collation
into a batch, in one process (= one worker), and reports samples/s.

Consumption rate of one training host (assumption, stated in the output): Crab-7B
fine-tuning costs ~4 x 7e9 FLOPs per token through the LLM (forward 2N + activation
gradients 2N; the base weights are frozen, so no weight-gradient pass except LoRA) plus CLIP
ViT-L/14 forward on 10 frames (2 x 0.3e9 x 257 x 10) and BEATs (2 x 0.09e9 x 480); an AVE
sample is ~750 tokens (10 x 32 visual + 10 x 32 audio rows + ~110 text). At 40% MFU of the
bf16 dense peak that gives the step rate; workers = ceil(consumption / per-worker rate).

Run: ``python benchmarks/data_throughput.py [--media DIR] [--tokenizer DIR] [--samples N]``.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time


SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
from crab_jax.data.pipeline.buckets import Bucket
from crab_jax.data.records.crab import mask_tokens
from crab_jax.data.records.record import AudioSpec, Record
from crab_jax.families.crab import examples as E
from crab_jax.families.crab.collate import CollateConfig, collate
from crab_jax.families.crab.prompts import load_tokenizer

PEAK_BF16 = {"one H100 (SXM)": 989e12, "one TPU v4 host (4 chips)": 4 * 275e12}
MFU = 0.40
LLM_PARAMS, CLIP_PARAMS, BEATS_PARAMS = 7e9, 0.30e9, 0.09e9


def flops_per_sample(tokens: int = 750, frames: int = 10, segments: int = 10) -> float:
    llm = 4 * LLM_PARAMS * tokens
    clip = 2 * CLIP_PARAMS * 257 * frames
    beats = 2 * BEATS_PARAMS * 48 * segments
    return llm + clip + beats


def records() -> dict[str, Record]:
    ave = Record(family="crab", task="ave", mode="train", split="train", source="bench#ave",
                 videos=("ave/-67UNKFmRLk.mp4",), num_frames=10, audios=("ave/-67UNKFmRLk.mp3",),
                 audio=AudioSpec("clip", 10),
                 answer="So the audible and visible event in the video is <event> dog </event>, "
                        "and the time range is <range> 0,10 </range>.")
    s4 = Record(family="crab", task="s4", mode="quick_start", split="quick_start", source="bench#s4",
                image_path="s4/0.jpg", audios=("s4/audio.wav",), audio=AudioSpec("frame", 5, 0),
                mask_path="s4/0.png", frame_idx=0, answer=f"It is <mask_start>{mask_tokens()}<mask_end>")
    return {"video+audio (AVE: 10 frames, 10 x 1-s fbank)": ave, "image+audio (S4: 1 image, 1-s fbank, mask)": s4}


def settings_for(tokenizer, media: pathlib.Path) -> E.ExampleSettings:
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in tokenizer.get_vocab() if t.startswith("<")}
    return E.ExampleSettings(data_root=str(media), tasks=("ave", "s4"), image_size=224, frame_slots=10,
                             audio_slots=10, visual_queries=32, audio_queries=32, token_ids=ids,
                             mask_token_ids=tuple(ids[f"<mask_{i}>"] for i in range(6)), seg_enabled=True,
                             visual_offset=0, audio_offset=320)


def measure(record: Record, tokenizer, settings, samples: int, batch: int) -> dict:
    E.build_example(record, tokenizer, settings)  # warm-up: imports, codec init
    cc = CollateConfig(2, (2, 3, 4, 5, 6, 7), -1)
    t0 = time.perf_counter()
    exs = []
    for _ in range(samples):
        exs.append(E.build_example(record, tokenizer, settings))
    t_decode = time.perf_counter() - t0
    info = E.example_plan_info(exs[0], settings)
    bucket = Bucket(int(math.ceil(info.expanded_len / 128) * 128), exs[0].fbank_frames)
    t1 = time.perf_counter()
    n_batches = max(1, samples // batch)
    for k in range(n_batches):
        collate([exs[(k * batch + j) % samples] for j in range(batch)], bucket, settings, cc)
    t_collate = (time.perf_counter() - t1) / (n_batches * batch)
    per_sample = t_decode / samples + t_collate
    return {"samples_per_s": 1.0 / per_sample, "decode_ms": 1e3 * t_decode / samples,
            "collate_ms": 1e3 * t_collate, "tokens": info.expanded_len}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Decoded samples/s per data worker on the example media, and the "
                                            "workers needed to feed one H100 / one TPU v4 host.")
    p.add_argument("--media", default=str(SHARED / "media"), help="example media folder (default ../shared/media)")
    p.add_argument("--tokenizer", default=str(SHARED / "fixtures/crab/crab_full/tokenizer_mm"),
                   help="local tokenizer folder (default the fixture's word-level tokenizer)")
    p.add_argument("--samples", type=int, default=20, help="samples decoded per kind (default 20)")
    p.add_argument("--batch", type=int, default=8, help="collation batch size (default 8)")
    args = p.parse_args(argv)
    tok = load_tokenizer(args.tokenizer)
    settings = settings_for(tok, pathlib.Path(args.media))
    results = {}
    for name, rec in records().items():
        r = measure(rec, tok, settings, args.samples, args.batch)
        results[name] = r
        print(f"{name}: {r['samples_per_s']:.2f} samples/s per worker "
              f"(decode {r['decode_ms']:.1f} ms + collate {r['collate_ms']:.1f} ms per sample; "
              f"{r['tokens']} tokens)")
    f = flops_per_sample()
    worst = min(r["samples_per_s"] for r in results.values())
    print(f"assumed cost: {f / 1e12:.1f} TFLOP per AVE-like sample at {MFU:.0%} MFU")
    for host, peak in PEAK_BF16.items():
        rate = MFU * peak / f
        print(f"{host}: consumes ~{rate:.1f} samples/s -> {math.ceil(rate / worst)} workers "
              f"(slowest kind, {worst:.2f} samples/s per worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
