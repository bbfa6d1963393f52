"""One compiled program per distinct lowered module in a process.

Every :func:`~crab_jax.training.loop.train` call builds fresh closures, so ``jax.jit``'s own
cache never sees the same function twice: a process that trains several runs of one shape (the
transfer study's runs, a resume in the same process, the tests) compiled the same step again,
or at best loaded it from the persistent cache (XLA:CPU relinks every kernel: ~6 s for the tiny
Crab's step). Here the lowered module's text (no debug locations) plus the devices and the
compiler options is the key; a hit returns the executable already built.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from typing import Any, Mapping

# Executables kept per process (least recently used dropped first): enough for a run's buckets
# and its initialisers, bounded so a long study does not hold every program it ever built.
MAX_PROGRAMS = 16

_programs: collections.OrderedDict[str, Any] = collections.OrderedDict()
_lock = threading.Lock()


def program_key(lowered, devices, compiler_options: Mapping[str, Any] | None = None) -> str:
    digest = hashlib.sha256(lowered.as_text(debug_info=False).encode())
    digest.update(repr(tuple(int(d.id) for d in devices)).encode())
    digest.update(repr(sorted((compiler_options or {}).items())).encode())
    return digest.hexdigest()


def compile_once(lowered, devices, compiler_options: Mapping[str, Any] | None = None):
    """``lowered.compile(compiler_options)``, or the executable an identical module got before in
    this process. ``devices``: the program's devices (the mesh's), part of the key."""
    key = program_key(lowered, devices, compiler_options)
    with _lock:
        if key in _programs:
            _programs.move_to_end(key)
            return _programs[key]
    compiled = lowered.compile(compiler_options=dict(compiler_options)) if compiler_options else lowered.compile()
    with _lock:
        _programs[key] = compiled
        while len(_programs) > MAX_PROGRAMS:
            _programs.popitem(last=False)
    return compiled


def clear() -> None:
    """Forget every kept executable."""
    with _lock:
        _programs.clear()
