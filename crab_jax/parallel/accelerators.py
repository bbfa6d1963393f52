"""The accelerator table: peak FLOP/s and memory per device, one row per kind, one home.

Read by MFU reporting (:mod:`crab_jax.training.metrics`, by ``jax.Device.device_kind``), the
TPU compile check (:mod:`crab_jax.training.aot`, by Cloud TPU generation) and the launcher
(``launch/tpu.py``: the TPU VM software image per generation).
"""

from __future__ import annotations

import dataclasses

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One kind of device.

    Attributes:
      name: what it is called here (``tpu v4``, ``h100``).
      device_kinds: lower-case substrings of ``jax.Device.device_kind`` that identify it.
      peak_flops: dense bf16 FLOP/s per device (per chip; a megacore TPU chip is one device).
      hbm_gib: memory per device.
      tpu_generations: Cloud TPU accelerator-type prefixes (``v4`` of ``v4-32``), TPUs only.
      libtpu_name: the generation's name in libtpu topology strings (``v5e`` for ``v5litepod``).
      cores_in_name: TensorCores per chip counted in the accelerator type (``v4-8`` = 4 chips).
      megacore: the chip's TensorCores form one device (v4, v5p).
      runtime_version: the TPU VM software image.
    """

    name: str
    device_kinds: tuple[str, ...]
    peak_flops: float
    hbm_gib: float
    tpu_generations: tuple[str, ...] = ()
    libtpu_name: str = ""
    cores_in_name: int = 1
    megacore: bool = False
    runtime_version: str = ""

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * GIB)


ACCELERATORS = (
    Accelerator("tpu v2", ("tpu v2",), 45e12, 16, ("v2",), "v2", 2, False, "tpu-ubuntu2204-base"),
    Accelerator("tpu v3", ("tpu v3",), 123e12, 32, ("v3",), "v3", 2, False, "tpu-ubuntu2204-base"),
    Accelerator("tpu v4", ("tpu v4",), 275e12, 32, ("v4",), "v4", 2, True, "tpu-ubuntu2204-base"),
    Accelerator("tpu v5p", ("tpu v5p",), 459e12, 95, ("v5p",), "v5p", 2, True, "v2-alpha-tpuv5"),
    Accelerator("tpu v5e", ("tpu v5 lite", "tpu v5e"), 197e12, 16, ("v5e", "v5litepod"), "v5e", 1, False,
                "v2-alpha-tpuv5-lite"),
    Accelerator("tpu v6e", ("tpu v6",), 918e12, 32, ("v6e",), "v6e", 1, False, "v2-alpha-tpuv6e"),
    Accelerator("h200", ("h200",), 989e12, 141),
    Accelerator("h100", ("h100",), 989e12, 80),
    Accelerator("a100", ("a100",), 312e12, 80),
)


def by_device_kind(kind: str) -> Accelerator | None:
    """The row whose ``device_kinds`` occur in ``kind`` (``jax.devices()[0].device_kind``), or None."""
    kind = kind.lower()
    for acc in ACCELERATORS:
        if any(k in kind for k in acc.device_kinds):
            return acc
    return None


def tpu_generations() -> dict[str, Accelerator]:
    """Cloud TPU accelerator-type prefix (``v4``, ``v5litepod``, ...) -> its row."""
    return {gen: acc for acc in ACCELERATORS for gen in acc.tpu_generations}
