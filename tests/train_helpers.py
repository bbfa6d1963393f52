"""Shared pieces of the trainer tests: a small CPU config and a persistent compile cache."""

from __future__ import annotations

import contextlib
import pathlib

import jax

from crab_jax.config.loader import load_config_file
from tests import jax_env

REPO = pathlib.Path(__file__).resolve().parents[1]


def small_config(**overrides):
    """``configs/tiny.py`` on the ``random`` source (3 frame / 2 audio slots, 48 tokens), without the
    seg branch (halves compile time), training the I-LoRA weights and the projectors, no held-out
    evaluation, no TensorBoard, no bar."""
    c = load_config_file(str(REPO / "configs" / "tiny.py"))
    c.data.source = "random"
    c.data.seq_len = 48
    c.data.frame_slots = 3
    c.data.audio_slots = 2
    c.data.fbank_frames = 32
    c.data.tasks = ("ave", "avqa", "s4", "avss")
    c.model.base_vocab = -1
    c.eval.at_end = False
    c.model.seg_branch = False
    # Not the seg module: without the seg branch its gradients are zeros, and its tensors would be
    # about half the optimizer's (each a few XLA:CPU kernels to compile in every step).
    c.trainable = (r"\.lora_(A|B|route)$", r"^vl_projector\.", r"^al_projector\.")
    c.optim.lr = 3e-3
    c.optim.schedule = "constant"
    c.metrics.log_every = 1
    c.checkpoint.keep = 2
    c.train.num_steps = 16
    c.train.global_batch = 4
    c.data.num_distinct = 2
    c.checkpoint.every_steps = 4
    c.checkpoint.async_save = True
    c.metrics.tensorboard = False
    c.metrics.progress_bar = False
    return apply_overrides(c, overrides)


def synthetic_tiny_config(tmp_path, tasks, *, num_train: int, num_test: int = 4, steps: int, **overrides):
    """``configs/tiny.py`` on a small synthetic dataset generated under ``tmp_path`` (its own data and
    cache folders), batch 4, ``steps`` steps, one eval batch of 4, no bar; ``overrides`` as in
    :func:`small_config`."""
    c = load_config_file(str(REPO / "configs" / "tiny.py"))
    c.data.tasks = tuple(tasks)
    c.data.synthetic.num_train = num_train
    c.data.synthetic.num_test = num_test
    c.data.path = str(tmp_path / "synthetic")
    c.data.cache_dir = str(tmp_path / "cache")
    c.train.global_batch = 4
    c.train.num_steps = steps
    c.eval.batch_size = 4
    c.metrics.progress_bar = False
    return apply_overrides(c, overrides)


def apply_overrides(c, overrides):
    """``{"a.b.c": value}`` set on the ConfigDict ``c`` (dotted keys, as ``--config.a.b.c=value``)."""
    for key, value in overrides.items():
        node = c
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return c


@contextlib.contextmanager
def compile_cache(directory):
    """Identical programs compiled by separate runs (fresh closures) load from disk instead, every
    program however quick to compile: from the session's cache (:mod:`tests.jax_env`), else from
    ``directory``."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", jax_env.session_cache_dir() or str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        yield
    finally:
        for n, v in old.items():
            jax.config.update(n, v)


def tensorboard_images(tb_dir) -> dict[str, list[tuple[int, int, int]]]:
    """``{tag: [(step, height, width), ...]}`` of every image summary in the event files of ``tb_dir``
    (TFRecord framing: length u64, its crc u32, the Event proto, its crc u32)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, int, int]]] = {}
    for path in sorted(pathlib.Path(tb_dir).glob("events.out.tfevents*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    out.setdefault(value.tag, []).append((int(event.step), value.image.height, value.image.width))
    return out
