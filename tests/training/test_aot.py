"""AOT compilation of THE train step for a TPU slice on this CPU host (``crab_jax.training.aot``).

The compile tests need ``libtpu`` (the ``[tpu]`` extra); without it they skip. The slice
table and the error messages are checked everywhere.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.checkpoints.test_run import FAST, declared
from tests.train_helpers import small_config

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"),
    reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU compiler for AOT compilation")


def test_slice_table_names_topologies_and_rejects_bad_names():
    from crab_jax.training.aot import parse_slice

    v4 = parse_slice("v4-32")
    assert (v4.topology_name, v4.num_chips, v4.chip_config_name) == ("v4:2x2x4", 16, "megacore")
    assert v4.hbm_bytes == 32 * 2 ** 30 and v4.peak_flops == 275e12
    assert parse_slice("v4-8").topology_name == "v4:2x2x1"
    assert parse_slice("v5e-4").topology_name == "v5e:2x2" and parse_slice("v5e-4").num_chips == 4
    with pytest.raises(ValueError, match="v4-7.*not a multiple of 2"):
        parse_slice("v4-7")
    with pytest.raises(ValueError, match="no known v4 slice with 3 chips"):
        parse_slice("v4-6")
    with pytest.raises(ValueError, match="expected a Cloud TPU accelerator type"):
        parse_slice("tpu-32")


def test_executed_flops_multiplies_out_the_loops_xla_counts_once():
    from crab_jax.training.aot import executed_flops

    flops = {"scan_uncounted_flops": 30.0}  # e.g. 3 more layers of 10
    assert executed_flops(100.0, flops, scan_layers=False, micro_batches=1) == 100.0
    assert executed_flops(100.0, flops, scan_layers=True, micro_batches=1) == 130.0
    # micro-batches: one loop over all of them, whose body XLA counted once; per micro-batch 30/4 uncounted
    assert executed_flops(100.0, flops, scan_layers=True, micro_batches=4) == 4 * (100.0 + 7.5)


@needs_libtpu
def test_tiny_train_step_compiles_for_a_tpu_and_reports_memory_and_flops():
    from crab_jax.training.aot import aot_report, format_report, parse_slice

    config = small_config(**declared(FAST))
    report = aot_report(config, parse_slice("v5e-1"))
    print(format_report(report))
    mem = report["memory_per_chip"]
    assert report["error"] is None and report["device_kind"].startswith("TPU")
    assert mem["fits"] and 0 < mem["total"] < 2 ** 30 and mem["arguments"] > 0 and mem["temporaries"] > 0
    # no scan, no accumulation: XLA's count is the executed count; it covers the LLM's model FLOPs and more
    # (encoders, Q-Formers, attention softmax), but not orders of magnitude more
    assert report["executed_flops_per_chip"] == report["xla_flops_per_chip"]
    assert report["model_flops_per_chip"] < report["xla_flops_per_chip"] < 100 * report["model_flops_per_chip"]
    assert 0 < report["predicted_mfu"] < 1


@needs_libtpu
def test_slice_mesh_spans_hosts_and_shards_the_state():
    """v4-32: 16 chips on 4 hosts; the trainer's state shardings use the slice's fsdp axis."""
    from crab_jax.training.aot import abstract_batch, parse_slice, slice_devices
    from crab_jax.training.setup import build_setup

    devices = slice_devices(parse_slice("v4-32"))
    assert len(devices) == 16 and len({d.process_index for d in devices}) == 4
    config = small_config(**{**declared(FAST), "train.global_batch": 16})
    setup, _, _ = build_setup(config, devices=devices)
    assert dict(setup.mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 1}
    spread = [s for s in jax_leaves(setup.shardings.params) if len(s.device_set) == 16 and "fsdp" in str(s.spec)]
    assert spread, "no trainable weight is sharded over the slice"
    batch = abstract_batch(config, setup)
    assert batch["input_ids"].shape == (16, config.data.seq_len) and "fsdp" in str(batch["input_ids"].sharding.spec)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_cli_help_explains_the_flags():
    import subprocess
    import sys

    from tests.train_helpers import REPO

    proc = subprocess.run([sys.executable, "-m", "crab_jax.aot_compile", "--helpshort"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    # absl's help flags exit with status 1 by design
    assert "--topology" in proc.stdout and "--json" in proc.stdout, proc.stderr[-2000:]
    assert "counts a loop body ONCE" in proc.stdout  # the module docstring says which number is which
