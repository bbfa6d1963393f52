"""torch / HF checkpoints <-> crab_jax, the part every model family shares.

:mod:`.mapping` (the table engine: one table drives both directions), :mod:`.readers` /
:mod:`.writers` (lazy and streaming tensor files), :mod:`.atomic` (outputs appear only when
complete), :mod:`.orbax_io` (``<dir>/params``), :mod:`.output` (a converted checkpoint and
its write), :mod:`.run_weights` (a training run's weights back to the canonical layout),
:mod:`.inspection` (``inspect``) and :mod:`.family_converter` (what a family provides:
its tables, sources and formats live in ``crab_jax/families/<name>/convert/``).
"""
