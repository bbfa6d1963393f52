"""The persistent compilation cache: where it lives, and that a second process loads its entries."""

import os
import pathlib
import subprocess
import sys
import textwrap

from crab_jax.training.compile_cache import cache_dir

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_cache_dir_settings(tmp_path):
    assert cache_dir("none") is None
    assert cache_dir("", str(tmp_path)) == tmp_path / "jax_cache"
    assert cache_dir(str(tmp_path / "x")) == tmp_path / "x"
    assert cache_dir("").name == "jax_cache" and cache_dir("").parent == pathlib.Path(os.path.expanduser("~/.cache/crab_jax"))


# A process that enables the cache and compiles one program; it prints how many entries exist
# before it compiles and whether JAX reported a persistent-cache hit.
SCRIPT = textwrap.dedent("""
    import logging, os, sys
    import jax, jax.numpy as jnp
    from crab_jax.training import compile_cache
    compile_cache.MIN_COMPILE_SECONDS = 0.0   # the test's program compiles in milliseconds
    path = compile_cache.enable_compilation_cache(sys.argv[1])
    before = len(os.listdir(path)) if path.exists() else 0
    hits = []
    class Hits(logging.Handler):
        def emit(self, record):
            if "Persistent compilation cache hit" in record.getMessage():
                hits.append(record)
    logging.getLogger("jax._src.compiler").addHandler(Hits())
    logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) * 3.0)
    f(jnp.ones((32, 48))).block_until_ready()
    print(before, len(os.listdir(path)), len(hits))
""")


def _run(cache: pathlib.Path) -> list[int]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True).stdout
    return [int(v) for v in out.split()[-3:]]


def test_second_process_loads_the_compiled_program(tmp_path):
    cache = tmp_path / "jax_cache"
    before, after, hits = _run(cache)
    assert before == 0 and after > 0 and hits == 0
    before2, after2, hits2 = _run(cache)
    assert before2 == after and after2 == after and hits2 > 0
