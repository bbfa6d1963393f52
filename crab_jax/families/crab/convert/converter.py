"""Crab's weight converter, as one :class:`~crab_jax.checkpoints.convert.family_converter.FamilyConverter`
(``Family.converter``): each hook is a reference to the module that does the work."""

from __future__ import annotations

import numpy as np

from crab_jax.checkpoints.convert.family_converter import FamilyConverter
from crab_jax.checkpoints.convert.output import Converted
from crab_jax.checkpoints.convert.run_weights import merge_run_weights
from crab_jax.families.crab import config_io
from crab_jax.families.crab.convert import arguments, inspection, to_jax, to_torch


def from_run(workdir: str, base: str, dtype: np.dtype | None) -> tuple[Converted, int]:
    """``(whole converted checkpoint, step)``: ``base``'s arrays with the run's latest weights over them."""
    config_json, _, components = to_torch.read_sections(base)
    vocab = int(config_json["llama"]["vocab_size"]) if "llama" in config_json else -1
    flat, note, step = merge_run_weights(workdir, base, vocab, dtype=dtype)
    if dtype is not None:
        config_json = dict(config_json, param_dtype=np.dtype(dtype).name)
    return Converted(flat, config_json, components, [note], {}), step


CONVERTER = FamilyConverter(
    config_file=config_io.CONFIG_FILE,
    texts=arguments.TEXTS,
    add_to_jax_arguments=arguments.add_to_jax_arguments,
    to_jax=to_jax.to_jax,
    add_to_torch_arguments=arguments.add_to_torch_arguments,
    to_torch=to_torch.to_torch,
    from_run=from_run,
    classify_keys=inspection.classify_keys,
    check_checkpoint=inspection.check_checkpoint,
)
