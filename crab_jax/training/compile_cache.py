"""JAX's persistent compilation cache, on by default for the commands (``train.compilation_cache``).

A rerun of the demo, a resumed job or the next run of a study with the same shapes loads its
compiled steps from disk instead of compiling them again (the tiny demo's ~40 s of compiles;
minutes for the paper recipe). XLA keys each entry by the program, the compiler options and the
devices, so a changed model or mesh compiles afresh and a stale entry is never used.
"""

from __future__ import annotations

import logging
import os
import pathlib

import jax

from crab_jax.config.sections import DEFAULT_CACHE_DIR

log = logging.getLogger(__name__)

# Programs that compile faster than this are not worth a disk entry (JAX's default is 1 s, which
# leaves out most of a tiny CPU run's steps; its decode / eval steps compile in ~0.2-2 s).
MIN_COMPILE_SECONDS = 0.2


def cache_dir(setting: str, data_cache_dir: str = "") -> pathlib.Path | None:
    """Where the cache lives: ``setting`` (``""``: ``<data.cache_dir or ~/.cache/crab_jax>/jax_cache``;
    ``"none"``: off -> None)."""
    if setting.lower() == "none":
        return None
    if setting:
        return pathlib.Path(os.path.expanduser(setting))
    return pathlib.Path(os.path.expanduser(data_cache_dir or DEFAULT_CACHE_DIR)) / "jax_cache"


def enable_compilation_cache(setting: str, data_cache_dir: str = "") -> pathlib.Path | None:
    """Turns the persistent cache on (before the process's first compile) unless ``setting`` is
    ``"none"`` or a directory was already configured (``JAX_COMPILATION_CACHE_DIR`` wins)."""
    path = cache_dir(setting, data_cache_dir)
    if path is None or jax.config.jax_compilation_cache_dir:
        return None if path is None else pathlib.Path(jax.config.jax_compilation_cache_dir)
    if not path.is_absolute() and "://" not in str(path):
        path = path.resolve()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    log.info("compilation cache: %s", path)
    return path
