"""Sequence packing vs one sample per row: samples/s of the train step on the same records.

    python -m benchmarks.packing                          # CPU: tiny Crab, synthetic AVQA + AVE, 448-token rows
    python -m benchmarks.packing --seq_len 2048 --batch 8 # longer rows

Both variants run the trainer's own step (:class:`benchmarks.step_timing.Runner`) on a batch of
the trainer's own data pipeline (the built-in synthetic dataset of ``--config``, LM-only tasks,
so every sample is packable) at the same row shape ``[batch, seq_len]``:

  unpacked  ``data.buckets = (seq_len,)``: one sample per row, left-padded (what a run with one
            long bucket does, e.g. ``configs/tpu_v4.py``'s 2048 tokens for 300-750-token samples)
  packed    ``data.packing.seq_len = seq_len``: as many samples per row as fit (attention kept
            within each sample), each row's encoders on its own samples' frames and audio

Timed interleaved step by step in one process (:func:`benchmarks.step_timing.time_variants`);
reported: step time, samples per step, samples/s and its ratio, real tokens/s, padding.
"""

from __future__ import annotations

import statistics

from benchmarks.step_timing import Runner, paired_ratio, run_cli, time_variants

VARIANTS = ("unpacked", "packed")
TASKS = ("avqa", "ave")  # LM-only synthetic tasks: every sample packable


def variant_config(base, variant: str, args):
    c = base.copy_and_resolve_references()
    c.train.global_batch = int(args.batch)
    c.data.tasks = TASKS
    c.model.seg_branch = False
    c.eval.at_end = False
    if variant == "unpacked":
        c.data.buckets = (int(args.seq_len),)
    else:
        c.data.packing.seq_len = int(args.seq_len)
        c.data.packing.samples = int(args.samples)
    return c


def full_batch(config):
    """``(batch, its BatchSpec, model config)``: the first batch of the run's pipeline in its main
    bucket (packed rows for the packed variant) without filler rows."""
    from crab_jax.data.sources import prepare_data, train_iterator
    from crab_jax.training.setup import resolve, run_model_config

    run, family = resolve(config)
    data = prepare_data(run.data, family, progress=False)
    model_cfg = run_model_config(run, family, data)
    it = train_iterator(run, family, model_cfg, data, progress=False)
    packed = int(run.data.packing.seq_len) > 0
    for _ in range(200):
        batch = next(it)
        if ("segment_ids" in batch) == packed and not it.last_report["filler"]:
            spec = next(s for s in it.bucket_specs()
                        if s.seq_len == batch["input_ids"].shape[1] and bool(s.segments) == packed)
            return batch, spec, model_cfg
    raise RuntimeError("no full batch of the main bucket in 200 batches")


def run(config, args) -> dict:
    def make(name):
        c = variant_config(config, name, args)
        batch, spec, model_cfg = full_batch(c)
        return Runner(c, model_cfg, name, local_batch=batch, spec=spec)

    runners = time_variants(make, args.variants, int(args.steps))
    ref = runners["unpacked"] if "unpacked" in runners else next(iter(runners.values()))
    out = {"seq_len": args.seq_len, "batch": args.batch, "steps": args.steps, "tasks": list(TASKS), "variants": {}}
    for name, r in runners.items():
        t = statistics.median(r.times)
        time_ratio = paired_ratio(r.times, ref.times)
        out["variants"][name] = {
            "step_s": t, "samples_per_step": r.samples, "samples_per_s": r.samples / t,
            "samples_per_s_vs_unpacked": (r.samples / ref.samples) / time_ratio, "step_time_vs_unpacked": time_ratio,
            "real_tokens_per_s": r.tokens / t, "padding_fraction": 1.0 - r.tokens / (args.batch * args.seq_len),
            "compile_s": r.compile_s, "times_s": r.times}
    return out


def print_table(out: dict, title: str) -> None:
    print(title)
    print("| variant | step s (median) | samples / step | samples/s | vs unpacked | real tokens/s | padding |")
    print("|---|---|---|---|---|---|---|")
    for name, e in out["variants"].items():
        print(f"| {name} | {e['step_s']:.3f} | {e['samples_per_step']} | {e['samples_per_s']:.1f} | "
              f"{e['samples_per_s_vs_unpacked']:.2f}x | {e['real_tokens_per_s']:.0f} | {e['padding_fraction']:.1%} |")


def extra_flags(flags) -> dict:
    return {"samples": flags.DEFINE_integer("samples", 8, "Most samples per packed row.")}


if __name__ == "__main__":
    run_cli(default_config="configs/tiny.py", variants=VARIANTS, batch=8, seq_len=448, steps=10,
            extra_flags=extra_flags, run=run, table=print_table,
            title=lambda out: f"packing vs one sample per row, {out['batch']} rows x {out['seq_len']} tokens, "
                              f"median of {out['steps']} interleaved steps")
