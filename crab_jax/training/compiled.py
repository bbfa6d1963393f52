"""One compiled program per distinct lowered module in a process.

Every :func:`~crab_jax.training.loop.train` call builds fresh closures, so ``jax.jit``'s own
cache never sees the same function twice: a process that trains several runs of one shape (the
transfer study's runs, a resume in the same process, the tests) compiled the same step again,
or at best loaded it from the persistent cache, where XLA:CPU relinks every kernel
(``benchmarks/repeat_run.py``: a second tiny run 12.3 s from the persistent cache, 7.7 s with the
programs kept). Here the lowered module's text (no debug locations) plus the mesh's devices and
the compiler options is the key; a hit returns the executable already built.
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


def program_key(lowered, mesh, compiler_options: Mapping[str, Any] | None = None) -> str:
    digest = hashlib.sha256(lowered.as_text(debug_info=False).encode())
    digest.update(repr(tuple(int(d.id) for d in mesh.devices.flat)).encode())
    digest.update(repr(sorted((compiler_options or {}).items())).encode())
    return digest.hexdigest()


def compile_once(lowered, mesh, compiler_options: Mapping[str, Any] | None = None):
    """``lowered.compile(compiler_options)``, or the executable an identical module got before in
    this process on the same devices (``mesh``'s)."""
    key = program_key(lowered, mesh, compiler_options)
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
