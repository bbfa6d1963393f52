"""TEMPORARY: moved to :mod:`crab_jax.checkpoints.convert.tables.ilora` (import it from there);
this re-export goes away once nothing imports the old path."""

from crab_jax.checkpoints.convert.tables.ilora import ilora_rules, ilora_table  # noqa: F401
