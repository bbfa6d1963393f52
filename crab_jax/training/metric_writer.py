"""Metrics to TensorBoard (tensorboardX) and ``<workdir>/metrics.jsonl``, process 0 only.

``workdir`` may be local or ``gs://`` (tensorboardX writes event files there through
``google-cloud-storage``, the ``[tpu]`` extra; the JSONL file through :mod:`crab_jax.io.jsonl`).
"""

from __future__ import annotations

import os

from tensorboardX import SummaryWriter

from crab_jax.io.paths import as_path
from crab_jax.io.jsonl import JsonlFile


class MetricWriter:
    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 resumed_step: int | None = None):
        """``resumed_step``: the checkpoint step a resumed run starts from; metrics.jsonl rows of later
        steps (written before a crash, and written again now) are dropped on open."""
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        workdir = as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = JsonlFile(workdir / "metrics.jsonl", keep_through_step=resumed_step)
        if tensorboard:
            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.append({"step": int(step), **{k: v for k, v in metrics.items() if k != "step"}})
        if self._tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def write_images(self, step: int, images: dict) -> None:
        """TensorBoard images ``{tag: [H, W, 3] uint8}`` (nothing without TensorBoard)."""
        if not self.enabled or self._tb is None:
            return
        for tag, image in images.items():
            self._tb.add_image(tag, image, step, dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
