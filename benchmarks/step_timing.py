"""What the train-step benchmarks share (``train_step``: Crab, ``thinker_step``: Crab+): the
reference peak, one variant's compiled step, the interleaved timing, the result and its table.

A *variant* is a run config (``ml_collections.ConfigDict``, any ``--config.x=y`` applied) and
the model config built from it; :class:`Runner` compiles THE train step of the trainer
(``crab_jax.training.step``: forward, loss, backward, AdamW, donated state) for it on one
random global batch. :func:`time_variants` times several: on the CPU all are built first and
then stepped in turn, one step each per round (every other round in reverse order, so that no
variant always follows the same one), and a ratio is the median over rounds of the two
variants' step times in that round (machine noise, another process included, hits both steps
of a round alike, so the ratios stay fair when the load changes from round to round); on an
accelerator one after the other, each state freed before the next is built (two 7B states may
not fit), and a ratio is that of the medians.

MFU = the family's model FLOPs per token (``Family.flops``: ``2 fwd + 2 N_t``) x real tokens
/ step time / (devices x peak); the peak comes from the device table of
``crab_jax.training.metrics`` (or ``metrics.peak_flops_per_device``), and on the CPU, which
has none, it is the best rate one large fp32 matmul reaches here, measured in the same run
between the rounds (CPU "MFU" = the fraction of what XLA:CPU reaches on a matmul). ``xla_mfu`` divides XLA's own
count of the compiled step's FLOPs instead (every op the program runs; a loop body counted
once, so it is low with ``scan_layers`` or gradient accumulation).
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


_square = jax.jit(lambda x: x @ x)  # one jit: re-measuring between rounds compiles nothing new


def measured_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an ``n x n`` fp32 matmul on the default device (the CPU's reference "peak")."""
    a = jnp.ones((n, n), jnp.float32)
    f = _square
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(times)


def reference_peak(config) -> tuple[float, str]:
    """``(peak FLOP/s per device, where it comes from)``: the config / device table, else 0 and
    ``"measured fp32 matmul"`` (:func:`benchmark` measures it while timing)."""
    from crab_jax.training.metrics import peak_flops_per_device

    peak = peak_flops_per_device(float(config.metrics.peak_flops_per_device))
    return (peak, "device table / config") if peak > 0 else (0.0, "measured fp32 matmul")


class Runner:
    """One variant: sharded state, compiled step, the global batch (``data.source='random'``).

    Attributes: ``tokens`` (real tokens of the batch), ``compile_s``, ``flops_per_token`` (the
    family's model FLOPs), ``xla_flops`` (XLA's count for one compiled step), ``trainable``
    (trainable parameters), ``times`` (seconds of each timed step).
    """

    def __init__(self, config, model_cfg, name: str, local_batch: dict | None = None, spec=None):
        """``local_batch``: the batch to step on, with its BatchSpec ``spec`` (default: the run's
        ``random`` source's first batch and its spec)."""
        from crab_jax.data.sources import train_iterator
        from crab_jax.parallel.mesh import to_global
        from crab_jax.training.aot import xla_cost
        from crab_jax.training.setup import build_setup, resolve
        from crab_jax.training.step import batch_shardings, jit_train_step, make_train_step

        self.name = name
        run, family = resolve(config)
        setup, _, _ = build_setup(run, model_cfg=model_cfg, steps=1000)
        local = local_batch if local_batch is not None else next(train_iterator(run, family, model_cfg, None,
                                                                               progress=False))
        shapes = {k: np.shape(v) for k, v in local.items()}
        self.batch = to_global(local, batch_shardings(shapes, setup.mesh))
        self.tokens = float(np.asarray(local["attention_mask"]).sum())
        # Samples of the batch: a packed row holds several (segment_task_id >= 0), a row one.
        self.samples = int((np.asarray(local["segment_task_id"]) >= 0).sum()) if "segment_task_id" in local \
            else int(np.asarray(local["attention_mask"]).shape[0])
        step = make_train_step(setup, micro_batches=int(run.train.micro_batches), with_seg=bool(run.model.seg_branch),
                               num_tasks=len(run.data.tasks), router_groups=int(run.metrics.router_layer_groups))
        self.state = setup.init_fn()
        t0 = time.perf_counter()
        self.step_fn = jit_train_step(setup, step, shapes).lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.xla_flops = xla_cost(self.step_fn)["flops"]
        spec = spec if spec is not None else family.batch.spec(run.data, model_cfg, int(run.train.global_batch))
        self.flops_per_token = family.flops(model_cfg, spec, setup.trainable_paths).per_token
        self.trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setup.abstract.params))
        self.times: list[float] = []
        self.run_once()  # warm-up (allocation, first transfer)

    def run_once(self) -> float:
        t0 = time.perf_counter()
        self.state, aux = self.step_fn(self.state, self.batch)
        jax.block_until_ready(aux)
        return time.perf_counter() - t0

    def time(self, n: int) -> None:
        self.times += [self.run_once() for _ in range(n)]


def time_variants(make: Callable[[str], Runner], names: Sequence[str], steps: int,
                  each_round: Callable[[], None] | None = None) -> dict[str, Runner]:
    """``make(name)`` for every variant, each timed over ``steps`` steps after one warm-up:
    interleaved step by step on the CPU (rounds alternately forwards and backwards, then
    ``each_round()``), one variant after the other (state freed) elsewhere."""
    if jax.default_backend() == "cpu":
        runners = {n: make(n) for n in names}
        order = list(runners.values())
        for i in range(steps):
            # Every other round backwards: a step's place in its round (what ran just before it)
            # must not favour one variant.
            for r in (order if i % 2 == 0 else order[::-1]):
                r.time(1)
            if each_round is not None:
                each_round()
        return runners
    runners = {}
    for n in names:
        r = make(n)
        r.time(steps)
        r.state = r.batch = None
        runners[n] = r
        gc.collect()
    return runners


def benchmark(config, make: Callable[[str], Runner], names: Sequence[str], steps: int, ref: str, **header) -> dict:
    """Times the variants ``names`` (:func:`time_variants`) and returns :func:`summarize`'s result.

    Without a device-table peak the fp32 matmul rate is measured before the variants are built
    and after every round, and the best kept: a rate measured while another process runs is
    low (by 2x on a shared 2-core machine), which would inflate every MFU."""
    peak, kind = reference_peak(config)
    measured = []
    probe = (lambda: measured.append(measured_matmul_peak(repeats=2))) if peak <= 0 else None
    if probe is not None:
        probe()
    runners = time_variants(make, names, steps, probe)
    ref = ref if ref in runners else names[0]
    return summarize(runners, ref, max(measured) if measured else peak, kind, steps=steps, **header)


def paired_ratio(times: Sequence[float], ref_times: Sequence[float]) -> float:
    """Median over rounds of ``times[i] / ref_times[i]`` when both were timed in the same rounds
    (interleaved: a round's steps see the same machine load), else the ratio of the medians."""
    if len(times) == len(ref_times) and jax.default_backend() == "cpu":
        return statistics.median(t / r for t, r in zip(times, ref_times))
    return statistics.median(times) / statistics.median(ref_times)


def summarize(runners: Mapping[str, Runner], ref: str, peak: float, peak_kind: str, **header) -> dict:
    """The JSON result: ``header`` + the device + per variant its median and best step time, the
    ratio to ``ref``'s (key ``vs_<ref>``, :func:`paired_ratio`), tokens/s, MFU (model FLOPs) and
    XLA-counted MFU of the median step, compile time, trainable parameters, model FLOPs per token
    and every timed step's seconds."""
    n_dev = jax.device_count()
    out = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "devices": n_dev,
           **header, "peak_flops_per_device": peak, "peak_kind": peak_kind, "ref": ref, "variants": {}}
    for name, r in runners.items():
        t = statistics.median(r.times)
        out["variants"][name] = {
            "step_s": t, "best_step_s": min(r.times), "vs_" + ref: paired_ratio(r.times, runners[ref].times),
            "tokens_per_s": r.tokens / t, "mfu": r.flops_per_token * r.tokens / t / (n_dev * peak),
            "xla_mfu": r.xla_flops / t / (n_dev * peak), "compile_s": r.compile_s, "trainable_params": r.trainable,
            "flops_per_token": r.flops_per_token, "xla_flops_per_step": r.xla_flops, "times_s": r.times}
    return out


def print_table(out: dict, title: str) -> None:
    """The markdown table of :func:`summarize`'s result (``docs/benchmarks.md`` format), after ``title``."""
    ref = out["ref"]
    print(f"{title}; {out['device']} x{out['devices']}, median of {out['steps']} steps; "
          f"peak {out['peak_flops_per_device']:.3g} FLOP/s ({out['peak_kind']})")
    print(f"| variant | step s (median) | best step s | vs {ref} | tokens/s | MFU | XLA-counted MFU | "
          "trainable params | model FLOPs / token | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, e in out["variants"].items():
        print(f"| {name} | {e['step_s']:.4f} | {e['best_step_s']:.4f} | {e['vs_' + ref]:.3f} | {e['tokens_per_s']:.0f} | {e['mfu']:.3f} | "
              f"{e['xla_mfu']:.3f} | {e['trainable_params']:,} | {e['flops_per_token'] / 1e6:.2f} M | "
              f"{e['compile_s']:.1f} |")


def check_variants(names: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple; raises ``absl.app.UsageError`` on an unknown one."""
    from absl import app

    names = tuple(names)
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise app.UsageError(f"--variants: unknown {unknown}; known {tuple(known)}")
    return names


def run_cli(*, default_config: str, variants: Sequence[str], batch: int, seq_len: int, steps: int,
            extra_flags: Callable[[object], dict], run: Callable, title: Callable[[dict], str],
            table: Callable[[dict, str], None] | None = None) -> None:
    """The benchmarks' shared command line: ``--config`` (+ ``--config.a.b=v``), the common flags
    (batch, seq_len, hidden, layers, steps, variants, json) and ``extra_flags(absl.flags)``; then
    ``run(config, args) -> result dict``, its table (``table(result, title)``, default
    :func:`print_table`; not with ``--json``) and its JSON line."""
    import argparse
    import json

    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", default_config, "Training config file[:variant]; "
                                             "override keys with --config.a.b=v.", lock_config=True)
    defined = dict(
        batch=flags.DEFINE_integer("batch", batch, "Global batch."),
        seq_len=flags.DEFINE_integer("seq_len", seq_len, "Tokens per sample (media tokens included)."),
        hidden=flags.DEFINE_integer("hidden", 512, "Tiny preset only: LLM width (heads of 64)."),
        layers=flags.DEFINE_integer("layers", 4, "Tiny preset only: LLM decoder layers."),
        steps=flags.DEFINE_integer("steps", steps, "Timed steps per variant (after one warm-up)."),
        variants=flags.DEFINE_list("variants", list(variants), "Subset of " + ",".join(variants) + "."),
        json=flags.DEFINE_bool("json", False, "Print only the JSON result."),
        **extra_flags(flags))

    def main(argv) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        args = argparse.Namespace(**{k: v.value for k, v in defined.items()})
        args.variants = check_variants(args.variants, variants)
        out = run(config.value, args)
        if not args.json:
            (table or print_table)(out, title(out))
        print(json.dumps(out))

    app.run(main)
