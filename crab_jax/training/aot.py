"""Compile THE train step for a TPU slice on this (CPU) host and report memory and FLOPs.

    python -m crab_jax.aot_compile --config configs/tpu_v4.py --topology v4-32 [--json]

Needs ``libtpu`` (``pip install -e '.[tpu]'``): it supplies the TPU compiler; no TPU is
used. Every array is abstract (``jax.ShapeDtypeStruct`` with a sharding over the slice's
compile-only devices), so the paper's 7B recipe compiles without materialising a weight.
The step is the trainer's own (:func:`crab_jax.training.step.make_train_step` +
:func:`~crab_jax.training.step.jit_train_step` on :func:`crab_jax.training.state.make_setup`),
lowered with ``jit(...).lower(abstract_state, abstract_batch).compile()``.

Reported numbers, all PER CHIP (the partitioned SPMD program runs once on every chip):

* ``memory``: XLA's ``memory_analysis()``: arguments (state + batch shard), outputs,
  aliased (donated state reused as output), temporaries (activations, gradients, ...),
  generated code; ``total = arguments + outputs - aliased + temporaries + code`` against
  the chip's HBM.
* ``xla_flops``: XLA's ``cost_analysis()["flops"]`` of the compiled program (every op:
  encoders, attention, softmax, optimizer ...). XLA counts a loop body ONCE, so with
  ``model.scan_layers`` (one ``while`` over each layer stack: the decoder, and the towers a
  family scans) and with gradient accumulation (``train.micro_batches > 1``) it is far below
  what runs.
* ``model_flops``: the family's analytic training FLOPs per token (``Family.flops``:
  ``2 fwd + 2 N_t``; no remat recomputation; Crab: the LLM, Crab+: all three towers) x global
  tokens per step (every position of every bucket counted) / chips. This is what MFU divides.
* ``recompute_flops``: one more forward through the rematted layers when ``model.remat`` is
  ``full`` (0 otherwise); executed, but not model FLOPs.
* ``executed_flops``: an estimate of what the chip really runs: ``xla_flops`` with its
  loops multiplied out (every scanned stack's iterations after the first, which XLA did not
  count, are added with the analytic per-layer FLOPs incl. recomputation; the accumulation
  body x micro-batches).
  Without scan and accumulation it is exactly ``xla_flops``.
* ``predicted_mfu = model_flops / executed_flops``: the MFU of a step that ran every FLOP
  it executes at the chip's peak: a compute-bound upper bound (real runs lose more to
  communication and memory-bound ops). ``predicted_step_time_s = executed_flops / peak``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import pathlib
import re
import time

import jax
from jax.experimental import topologies

from crab_jax.config.sections import RunConfig
from crab_jax.families.base import Family
from crab_jax.parallel.accelerators import GIB, tpu_generations
from crab_jax.models.attention import resolve_attention
from crab_jax.training.setup import build_setup, resolve
from crab_jax.training.step import batch_shardings, jit_train_step, make_train_step

# Generations whose topologies the compile check knows (libtpu compile-only devices).
AOT_GENERATIONS = ("tpu v4", "tpu v5p", "tpu v5e", "tpu v6e")


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A Cloud TPU slice as the compiler sees it.

    Attributes:
      name: the user-facing accelerator type (``v4-32``).
      topology_name: libtpu's topology string (``v4:2x2x4``: chips along x, y, z).
      chip_config_name: ``megacore`` (v4 / v5p: the two TensorCores are one device) or ``default``.
      chips_per_host_bounds: chips on one host (VM) along each dimension.
      wrap: torus wrap-around per dimension.
      num_chips: devices of the mesh.
      hbm_bytes: HBM per chip.
      peak_flops: dense bf16 FLOP/s per chip.
    """

    name: str
    topology_name: str
    chip_config_name: str
    chips_per_host_bounds: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]
    num_chips: int
    hbm_bytes: int
    peak_flops: float


# chips -> physical shape of the slice (3D tori for v4 / v5p, 2D for v5e / v6e)
_SHAPES_3D = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


def parse_slice(name: str) -> TpuSlice:
    """``v4-32`` / ``v5e-4`` / ``v5p-8`` / ``v6e-16`` (Cloud TPU accelerator types) -> :class:`TpuSlice`."""
    generations = {g: a for g, a in tpu_generations().items() if a.name in AOT_GENERATIONS}
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    if not m or m.group(1) not in generations:
        raise ValueError(f"--topology {name!r}: expected a Cloud TPU accelerator type such as v4-8, v4-32, "
                         f"v5p-8, v5e-4, v6e-8 (generations: {sorted(generations)})")
    gen, count = m.group(1), int(m.group(2))
    acc = generations[gen]
    prefix, cores_in_name, megacore = acc.libtpu_name, acc.cores_in_name, acc.megacore
    if count % cores_in_name:
        raise ValueError(f"--topology {name!r}: {gen} sizes count TensorCores ({cores_in_name} per chip); "
                         f"{count} is not a multiple of {cores_in_name}")
    chips = count // cores_in_name
    table = _SHAPES_3D if megacore else _SHAPES_2D
    if chips not in table:
        sizes = sorted(c * cores_in_name for c in table)
        raise ValueError(f"--topology {name!r}: no known {gen} slice with {chips} chips; known sizes: "
                         f"{', '.join(f'{gen}-{s}' for s in sizes)}")
    shape = table[chips]
    host = (2, 2, 1) if megacore else ((2, 2, 1) if chips >= 4 else (1, 1, 1))
    host = tuple(min(h, s) for h, s in zip(host, tuple(shape) + (1,) * (3 - len(shape))))
    wrap = (chips >= 64,) * 3 if megacore else (False, False, False)  # full v4/v5p cubes are tori
    return TpuSlice(name=name, topology_name=f"{prefix}:" + "x".join(map(str, shape)),
                    chip_config_name="megacore" if megacore else "default", chips_per_host_bounds=host,
                    wrap=wrap, num_chips=chips, hbm_bytes=acc.hbm_bytes, peak_flops=acc.peak_flops)


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None or bool(os.environ.get("TPU_LIBRARY_PATH"))


def slice_devices(tpu: TpuSlice) -> list:
    """Compile-only devices of the slice (no TPU attached)."""
    if not libtpu_available():
        raise RuntimeError("AOT compilation for TPU needs libtpu: pip install -e '.[tpu]' "
                           "(or set TPU_LIBRARY_PATH to a libtpu.so)")
    # libtpu takes /tmp/libtpu_lockfile when loaded; compiling only, we may share the host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not any(pathlib.Path("/dev").glob("accel*")) and not pathlib.Path("/dev/vfio/0").exists():
        # Not a TPU VM: without these libtpu asks the (absent) GCE metadata server and logs errors.
        for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                           ("TPU_WORKER_ID", "0"), ("TPU_ACCELERATOR_TYPE", tpu.name)):
            os.environ.setdefault(key, value)
    topo = topologies.get_topology_desc(tpu.topology_name, "tpu", chip_config_name=tpu.chip_config_name,
                                        chips_per_host_bounds=tpu.chips_per_host_bounds, num_slices=1,
                                        wrap=tpu.wrap)
    devices = list(topo.devices)
    if len(devices) != tpu.num_chips:
        raise RuntimeError(f"{tpu.name}: libtpu made {len(devices)} devices for {tpu.topology_name}, "
                           f"expected {tpu.num_chips}")
    return devices


def aot_model_config(run: RunConfig, family: Family):
    """The run's model config from the ``model`` section alone: an AOT check reads no dataset, so
    ``model.base_vocab = -1`` keeps the preset's vocabulary (the paper's: LLaMA-2's 32000 + 17).
    ``model.attention = auto`` is resolved for the target, a TPU (splash), not for this host."""
    model = run.model
    if model.attention == "auto":
        model = dataclasses.replace(model, attention=resolve_attention("auto", "tpu"))
    return family.model_config(model, None)


def batch_spec(run: RunConfig, setup):
    """The global batch's static shapes: the packed bucket's with ``data.packing`` on (the shape
    most steps of such a run take), else the family's random source's for the run's data config."""
    batch = setup.family.batch
    if int(run.data.packing.seq_len) > 0:
        if batch.packed_spec is None:
            raise ValueError(f"config data.packing.seq_len={run.data.packing.seq_len}: the {setup.family.name} "
                             "family cannot pack samples; set data.packing.seq_len=0")
        return batch.packed_spec(run.data, setup.model_cfg, int(run.train.global_batch))
    return batch.spec(run.data, setup.model_cfg, int(run.train.global_batch))


def abstract_batch(run: RunConfig, setup) -> dict:
    """The global batch as ``ShapeDtypeStruct`` s placed as the trainer places real batches."""
    run = RunConfig.from_config(run)
    shapes = setup.family.batch.shapes(batch_spec(run, setup), setup.model_cfg)
    shardings = batch_shardings({k: s for k, (s, _) in shapes.items()}, setup.mesh)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=shardings[k]) for k, (s, d) in shapes.items()}


class DoesNotFit(RuntimeError):
    """The TPU compiler refused the program: it needs more HBM than a chip has."""

    def __init__(self, message: str, setup):
        super().__init__(message)
        self.setup = setup
        m = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", message)
        scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
        self.temporaries = float(m.group(1)) * scale[m.group(2)] if m else None


def compile_train_step(config, devices):
    """``(setup, compiled)``: the trainer's jitted train step compiled for ``devices``.

    Raises :class:`DoesNotFit` when the compiler reports that the step needs more HBM than a chip has."""
    run, family = resolve(config)
    setup, _, _ = build_setup(run, model_cfg=aot_model_config(run, family), devices=devices)
    batch = abstract_batch(run, setup)
    step = make_train_step(setup, micro_batches=int(run.train.micro_batches),
                           with_seg=bool(run.model.seg_branch), num_tasks=len(run.data.tasks),
                           router_groups=int(run.metrics.router_layer_groups))
    jitted = jit_train_step(setup, step, {k: v.shape for k, v in batch.items()})
    lowered = jitted.lower(setup.abstract, batch)
    try:
        return setup, lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError; only the HBM refusal is a result, the rest re-raises
        if "RESOURCE_EXHAUSTED" in str(e) and "HBM" in str(e):
            raise DoesNotFit(str(e).splitlines()[0], setup) from e
        raise


def memory_report(compiled, hbm_bytes: int) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
           "generated_code": m.generated_code_size_in_bytes}
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["generated_code"]
    out["hbm"] = hbm_bytes
    out["fits"] = out["total"] <= hbm_bytes
    return out


def xla_cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    cost = cost or {}
    return {"flops": float(cost.get("flops", float("nan"))),
            "bytes_accessed": float(cost.get("bytes accessed", float("nan")))}


def analytic_flops(run: RunConfig, setup, num_chips: int) -> dict:
    """Model FLOPs per chip per step (the family's ``flops``), the remat recomputation on top of
    them, and the share of one decoder layer (see the module docstring)."""
    spec = batch_spec(run, setup)
    tokens = spec.batch * spec.seq_len
    f = setup.family.flops(setup.model_cfg, spec, setup.trainable_paths, remat=run.model.remat)
    return {"tokens_per_step": tokens, "model_flops_per_token": f.per_token,
            "model_flops": f.per_token * tokens / num_chips, "recompute_flops": f.recompute_per_token * tokens / num_chips,
            "scan_uncounted_flops": f.scan_uncounted_per_token * tokens / num_chips}


def executed_flops(xla_flops: float, flops: dict, *, scan_layers: bool, micro_batches: int) -> float:
    """XLA's count with its loops multiplied out: the train step runs every micro-batch in one
    loop (``micro_batches > 1``) whose body XLA counts once, so its count is one micro-batch (plus
    the once-per-step optimizer update, multiplied too: negligible at 7B); inside, every scanned
    layer stack runs one body that XLA counts once. What the stacks' other iterations run
    (``scan_uncounted_flops``, analytic) is added."""
    per_micro = xla_flops
    if scan_layers:
        per_micro += flops["scan_uncounted_flops"] / micro_batches
    return per_micro * micro_batches


def aot_report(config, tpu: TpuSlice, devices=None) -> dict:
    """Compiles and returns every figure (the JSON of ``--json``)."""
    config = RunConfig.from_config(config)
    devices = slice_devices(tpu) if devices is None else devices
    t0 = time.perf_counter()
    try:
        setup, compiled = compile_train_step(config, devices)
        memory, cost, error = memory_report(compiled, tpu.hbm_bytes), xla_cost(compiled), None
    except DoesNotFit as e:
        setup, error = e.setup, str(e)
        memory = {"temporaries": e.temporaries, "hbm": tpu.hbm_bytes, "fits": False}
        cost = {"flops": float("nan"), "bytes_accessed": float("nan")}
    seconds = time.perf_counter() - t0
    flops = analytic_flops(config, setup, tpu.num_chips)
    executed = executed_flops(cost["flops"], flops, scan_layers=bool(config.model.scan_layers),
                              micro_batches=int(config.train.micro_batches))
    return {
        "topology": tpu.name, "topology_name": tpu.topology_name, "chips": tpu.num_chips,
        "hosts": len({d.process_index for d in devices}), "device_kind": devices[0].device_kind,
        "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
        "global_batch": int(config.train.global_batch), "micro_batches": int(config.train.micro_batches),
        "seq_len": int(config.data.seq_len), "scan_layers": bool(config.model.scan_layers),
        "remat": str(config.model.remat), "compile_s": round(seconds, 1),
        "memory_per_chip": memory, "error": error,
        "xla_flops_per_chip": cost["flops"],
        "xla_bytes_accessed_per_chip": cost["bytes_accessed"],
        "executed_flops_per_chip": executed,
        **{f"{k}_per_chip" if k.endswith("flops") else k: v for k, v in flops.items() if k != "scan_uncounted_flops"},
        "peak_flops_per_chip": tpu.peak_flops,
        "ideal_step_time_s": flops["model_flops"] / tpu.peak_flops,
        "predicted_step_time_s": executed / tpu.peak_flops,
        "predicted_mfu": flops["model_flops"] / executed if executed > 0 else None,  # nan > 0 is False
    }


def format_report(r: dict) -> str:
    m = r["memory_per_chip"]
    g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    lines = [
        f"{r['topology']} ({r['topology_name']}, {r['chips']} x {r['device_kind']}, {r['hosts']} host(s)); "
        f"mesh {r['mesh']}; global batch {r['global_batch']} x {r['seq_len']} tokens, "
        f"{r['micro_batches']} micro-batch(es); scan_layers={r['scan_layers']} remat={r['remat']}; "
        f"compiled in {r['compile_s']} s",
        "memory per chip (XLA memory_analysis):",
    ]
    if r.get("error"):
        t = m.get("temporaries")
        lines.append(f"  DOES NOT FIT: {r['error']}")
        lines.append(f"  temporaries alone {g(t).strip() if t else '?'} > {m['hbm'] / GIB:.0f} GiB HBM: raise "
                     "train.micro_batches (fewer samples per forward) or use a bigger slice")
    elif m:
        for k in ("arguments", "outputs", "aliased", "temporaries", "generated_code"):
            lines.append(f"  {k:<15}{g(m[k])}")
        lines.append(f"  {'total':<15}{g(m['total'])}  of {m['hbm'] / GIB:.0f} GiB HBM "
                     f"({100 * m['total'] / m['hbm']:.1f}%): {'fits' if m['fits'] else 'DOES NOT FIT'}")
    else:
        lines.append("  (not available from this backend)")
    lines += [
        "FLOPs per chip per step:",
        f"  XLA cost_analysis        {r['xla_flops_per_chip']:.4g}  (loop bodies counted ONCE: the scanned "
        "layer stacks and the accumulation loop are undercounted)",
        f"  analytic model FLOPs     {r['model_flops_per_chip']:.4g}  (the family's flops: 2*fwd + 2*N_t per "
        f"token x {r['tokens_per_step']} tokens / {r['chips']} chips; what MFU divides)",
        f"  remat recompute          {r['recompute_flops_per_chip']:.4g}  (NOT in the model FLOPs: one more "
        "forward of the rematted layers with remat=full)",
        f"  executed (estimate)      {r['executed_flops_per_chip']:.4g}  (XLA's count with its loops multiplied "
        "out: + the scanned stacks' other iterations (analytic), x micro-batches)",
    ]
    if r["predicted_mfu"] is None:  # no compiled program: no XLA count
        lines.append(f"at {r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s peak: model FLOPs alone "
                     f"{r['ideal_step_time_s']:.3f} s per step; no MFU prediction without a compiled program")
    else:
        lines.append(f"at {r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s peak: model FLOPs alone "
                     f"{r['ideal_step_time_s']:.3f} s, executed FLOPs {r['predicted_step_time_s']:.3f} s per step -> "
                     f"predicted MFU {100 * r['predicted_mfu']:.1f}% (model / executed: a compute-bound upper bound)")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return None if isinstance(x, float) and not math.isfinite(x) else x
