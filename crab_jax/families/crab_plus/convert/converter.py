"""Crab+'s weight converter, as one :class:`~crab_jax.checkpoints.convert.family_converter.FamilyConverter`
(``Family.converter``): each hook is a reference to the module that does the work."""

from __future__ import annotations

import numpy as np

from crab_jax.checkpoints.convert import orbax_io
from crab_jax.checkpoints.convert.family_converter import FamilyConverter
from crab_jax.checkpoints.convert.output import Converted
from crab_jax.checkpoints.convert.run_weights import canonical_run_weights
from crab_jax.checkpoints.converted import latest_run_step_dir
from crab_jax.families.crab_plus.convert import arguments, config_io, inspection, to_jax, to_torch
from crab_jax.families.crab_plus.convert.variables import canonical_config, expected_variables, part_of


def from_run(workdir: str, base: str, dtype: np.dtype | None) -> tuple[Converted, int]:
    """``(whole converted checkpoint, step)``: ``base``'s arrays with the run's latest weights over them.

    A base converted from ``--hf`` alone whose config has an I-LoRA (the run's fresh adapters)
    takes the run's adapter weights too; they must then all be there.
    """
    config = config_io.load_config(base)
    cfg = canonical_config(to_jax.with_param_dtype(config.thinker, dtype))
    step_dir = latest_run_step_dir(workdir)
    flat = orbax_io.restore_flat(base)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}
    if cfg.lora is not None and "adapter" not in config.contents:
        shapes.update(expected_variables(cfg, ["adapter"]))
    run = canonical_run_weights(orbax_io.restore_flat(str(step_dir)), shapes, cfg.text.vocab_size,
                                source=str(step_dir))
    for key, value in run.items():
        flat[key] = value.astype(shapes[key][1]) if dtype is None else value
    if dtype is not None:
        flat = {k: v.astype(dtype) if to_jax.is_floating(v.dtype) else v for k, v in flat.items()}
    contents = tuple(p for p in config_io.PARTS if p in config.contents or any(part_of(k) == p for k in run))
    merged = config_io.CheckpointConfig(cfg, contents, config.hf_config)
    to_torch.check_arrays({k: (v.shape, v.dtype) for k, v in flat.items()}, merged, source=f"{base} + {step_dir}")
    note = f"{len(run)} arrays from {step_dir} over {base}"
    return Converted(flat, config_io.config_to_json(merged), list(contents), [note], {}), int(step_dir.name)


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
