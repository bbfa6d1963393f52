"""Every configuration key of ``python -m crab_jax.train``, with its default and meaning.

The schema itself is :mod:`crab_jax.config.schema` (one home, read by the trainer, the AOT
check and inference); this file is there so that ``--config configs/base.py`` runs the plain
defaults and a user's own config file can start from it the same way::

    from crab_jax.config.schema import get_config
"""

from crab_jax.config.schema import get_config

__all__ = ["get_config"]
