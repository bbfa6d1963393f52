"""The converter seam: what the ``crab-convert-weights`` CLI asks of a model family.

A family hands one :class:`FamilyConverter` to shared code as ``Family.converter``. The CLI
(:mod:`crab_jax.cli.convert_weights.cli`) owns the subcommands (``to-jax``, ``to-torch``,
``from-run``, ``inspect``), the options every family has (``--out``, ``--dtype``,
``--overwrite``, ``from-run``'s ``workdir`` / ``--base``), exit codes, the printed summary and
the atomic write of ``<out>/params`` + ``<out>/<config_file>``; the family owns which files
it reads and writes, their options, its mapping tables and the words of its ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from crab_jax.checkpoints.convert.output import Converted


@dataclasses.dataclass(frozen=True)
class ConverterTexts:
    """The family's words in ``--help`` (the CLI writes the generic ones).

    description: top-level help: what is converted, the checkpoint layout, the subcommands.
    to_jax_epilog / to_torch_epilog / from_run_epilog: examples after each subcommand's help.
    to_torch_description: what ``to-torch`` writes.
    """

    description: str
    to_jax_epilog: str
    to_torch_description: str
    to_torch_epilog: str
    from_run_epilog: str


@dataclasses.dataclass(frozen=True)
class CheckpointCheck:
    """What the family says about one of its converted checkpoints (``inspect``).

    about: one line on its config (sections, components).
    problems: None if every array is a variable of the config's model (names and shapes),
      else the message naming each offending array.
    unmatched: array names no row of the family's mapping tables matches.
    """

    about: str
    problems: str | None
    unmatched: list[str]


@dataclasses.dataclass(frozen=True)
class FamilyConverter:
    """A model family's torch / HF <-> crab_jax converter.

    config_file: the model-config JSON next to ``<dir>/params`` (e.g. ``crab_config.json``).
    texts: :class:`ConverterTexts`.
    add_to_jax_arguments: ``parser ->`` adds ``to-jax``'s sources and model-config options
      (the CLI has added ``--out`` and ``--dtype``, and adds ``--overwrite`` after).
    to_jax: ``(args, dtype or None) -> Converted``: the parsed options -> the whole checkpoint,
      every array checked against the model (:class:`~crab_jax.checkpoints.convert.mapping.MappingError`
      naming each bad key).
    add_to_torch_arguments: ``parser ->`` adds ``to-torch``'s ``--out`` and format options
      (after the CLI's ``checkpoint`` positional; ``--overwrite`` comes after).
    to_torch: ``args -> one-line summary``: writes ``args.out`` (atomically, refusing an existing
      one unless ``args.overwrite``).
    from_run: ``(run workdir, base checkpoint dir, dtype or None) -> (Converted, step)``: the run's
      latest weights over the base (:func:`crab_jax.checkpoints.convert.run_weights.merge_run_weights`).
    classify_keys: ``torch keys -> (key -> matched table label, unmatched keys)`` (``inspect``).
    check_checkpoint: ``(checkpoint dir, name -> (shape, dtype)) -> CheckpointCheck`` (``inspect``).
    """

    config_file: str
    texts: ConverterTexts
    add_to_jax_arguments: Callable[[argparse.ArgumentParser], None]
    to_jax: Callable[[argparse.Namespace, np.dtype | None], Converted]
    add_to_torch_arguments: Callable[[argparse.ArgumentParser], None]
    to_torch: Callable[[argparse.Namespace], str]
    from_run: Callable[[str, str, np.dtype | None], tuple[Converted, int]]
    classify_keys: Callable[[Sequence[str]], tuple[dict[str, str], list[str]]]
    check_checkpoint: Callable[[str, Mapping[str, tuple[tuple[int, ...], np.dtype]]], CheckpointCheck]
