"""Typed, frozen views of a validated run config, built once at the edge.

Each section of :mod:`crab_jax.config.schema` has a dataclass here with one field per key and
**no defaults**: the schema is the only place a default is written, and :func:`section`
refuses a config whose keys and the dataclass's fields differ (naming them), so the two
cannot drift apart. Library code takes these objects (``DataConfig``, ``TrainConfig``, ...)
instead of the raw ``ConfigDict``; ``RunConfig.from_config(config)`` builds them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import typing
from typing import Any, Mapping

DEFAULT_CACHE_DIR = "~/.cache/crab_jax"


def _plain(value):
    """ConfigDict / FrozenConfigDict -> dict, lists -> tuples (hashable, as frozen fields need)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def section(cls, values, where: str):
    """``cls(**values)`` with nested sections built recursively; every key must be a field and
    every field a key (``where`` names the section in the error)."""
    values = _plain(values)
    if not isinstance(values, Mapping):
        raise TypeError(f"config {where}: expected a section, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown, missing = sorted(set(values) - set(names)), sorted(set(names) - set(values))
    if unknown or missing:
        raise ValueError(f"config {where}: keys and {cls.__name__} fields differ: unknown {unknown}, missing {missing} "
                         "(the schema crab_jax/config/schema.py and crab_jax/config/sections.py declare the same keys)")
    out = {}
    for name in names:
        hint = hints[name]
        value = values[name]
        if dataclasses.is_dataclass(hint):
            value = section(hint, value, f"{where}.{name}")
        out[name] = value
    return cls(**out)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: float
    num_heads: int
    dropout: float
    targets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str
    preset: str
    init_checkpoint: str
    init_from_runs: tuple[str, ...]
    dtype: str
    param_dtype: str
    frozen_param_dtype: str
    scan_layers: bool
    remat: str
    attention: str
    vocab_pad_multiple: int
    base_vocab: int
    seg_branch: bool
    seg_chunk: int
    frame_chunk: int
    audio_chunk: int
    avs_query_num: int
    low_res_mask_size: int
    lora: LoraConfig


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float
    schedule: str
    warmup_ratio: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    grad_clip: float


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    global_batch: int
    micro_batches: int
    epochs: int
    num_steps: int
    stop_after_steps: int
    allow_config_change: bool
    compilation_cache: str


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    seed: int
    num_train: int
    num_test: int


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    seq_len: int
    samples: int
    frame_slots: int
    audio_slots: int


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str
    path: str
    prepared: str
    tokenizer: str
    cache_dir: str
    tasks: tuple[str, ...]
    seq_len: int
    buckets: tuple[int, ...]
    frame_slots: int
    audio_slots: int
    fbank_frames: int
    num_examples: int
    num_distinct: int
    worker_count: int
    read_threads: int
    prefetch: int
    seed: int
    shuffle: bool
    max_bad_fraction: float
    skip_bad_files: bool
    synthetic: SyntheticConfig
    packing: PackingConfig

    @property
    def seq_buckets(self) -> tuple[int, ...]:
        """Token-length buckets: ``buckets``, or ``(seq_len,)`` when it is empty."""
        return tuple(int(b) for b in self.buckets) or (int(self.seq_len),)

    @property
    def cache_root(self) -> pathlib.Path:
        """``cache_dir`` expanded (``~/.cache/crab_jax`` when empty)."""
        return pathlib.Path(os.path.expanduser(self.cache_dir or DEFAULT_CACHE_DIR))


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every_steps: int
    at_end: bool
    batch_size: int
    max_batches: int
    max_new_tokens: int


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int
    fsdp: int
    tensor: int
    rules: tuple

    @property
    def sizes(self) -> dict[str, int]:
        return {"data": int(self.data), "fsdp": int(self.fsdp), "tensor": int(self.tensor)}


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int
    keep: int
    async_save: bool
    fallback_on_corrupt: bool


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    log_every: int
    tensorboard: bool
    router_layer_groups: int
    peak_flops_per_device: float
    progress_bar: bool
    route_figures: bool


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    initialize: str
    coordinator_address: str
    num_processes: int
    process_id: int


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run config, typed (one field per schema key)."""

    seed: int
    stage: str
    model: ModelConfig
    trainable: tuple[str, ...]
    optim: OptimConfig
    train: TrainConfig
    data: DataConfig
    eval: EvalConfig
    mesh: MeshConfig
    checkpoint: CheckpointConfig
    metrics: MetricsConfig
    distributed: DistributedConfig

    @classmethod
    def from_config(cls, config: Any) -> "RunConfig":
        """From a (validated) ``ConfigDict`` or a plain dict of the same keys."""
        if isinstance(config, RunConfig):
            return config
        return section(cls, config, "")

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)

    def as_dict(self) -> dict:
        """JSON-ready (tuples become lists), as checkpoints store the config."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def eval_batch_size(self) -> int:
        """``eval.batch_size``, or ``train.global_batch`` when it is 0."""
        return int(self.eval.batch_size) or int(self.train.global_batch)
