"""Shared test fixtures: the parity fixture folder (``CRAB_FIXTURES``) and comparisons."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

from tests import jax_env

jax_env.apply_to_this_process()  # before anything starts JAX's CPU backend

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "crab"
DEFAULT_CRAB_PLUS_FIXTURES = REPO.parent / "shared" / "fixtures" / "crab_plus"
# fp32 parity bound: max abs error relative to the reference's largest magnitude.
PARITY_RTOL = 1e-4


def pytest_configure(config):
    if not hasattr(config, "workerinput") and not jax_env.session_cache_dir():  # the controller
        os.environ[jax_env.SESSION_CACHE_ENV] = tempfile.mkdtemp(prefix="crab_jax_test_jit_cache_")
        config._crab_jax_made_cache = os.environ[jax_env.SESSION_CACHE_ENV]
    import jax

    # Programs that take over a second to compile (JAX's default threshold) go to the session cache.
    jax.config.update("jax_compilation_cache_dir", jax_env.session_cache_dir())


def pytest_unconfigure(config):
    made = getattr(config, "_crab_jax_made_cache", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop(jax_env.SESSION_CACHE_ENV, None)


def fixtures_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CRAB_FIXTURES", str(DEFAULT_FIXTURES)))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return _fixture_folder(fixtures_root(), "CRAB_FIXTURES")


def crab_plus_fixtures_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CRAB_PLUS_FIXTURES", str(DEFAULT_CRAB_PLUS_FIXTURES)))


def _fixture_folder(root: pathlib.Path, env: str) -> pathlib.Path:
    if not (root / "manifest.json").is_file():
        msg = f"parity fixtures not found at {root} (set {env})"
        if _in_ci():
            pytest.fail(msg + "; in CI a missing fixture folder is a failure")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def crab_plus_fixtures_dir() -> pathlib.Path:
    """The original Crab+'s outputs on tiny configs (``CRAB_PLUS_FIXTURES``)."""
    return _fixture_folder(crab_plus_fixtures_root(), "CRAB_PLUS_FIXTURES")


@pytest.fixture(scope="session")
def crab_plus_manifest(crab_plus_fixtures_dir) -> dict:
    with open(crab_plus_fixtures_dir / "manifest.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def manifest(fixtures_dir) -> dict:
    with open(fixtures_dir / "manifest.json") as f:
        return json.load(f)


def assert_parity(actual, reference, name: str, rtol: float = PARITY_RTOL) -> float:
    """Asserts max|actual - reference| <= rtol * max|reference|; returns the relative error."""
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, f"{name}: shape {actual.shape} != reference {reference.shape}"
    scale = max(float(np.abs(reference).max()), 1e-12)
    err = float(np.abs(actual - reference).max()) / scale
    print(f"parity {name}: max abs err / max|ref| = {err:.3e} (bound {rtol:.1e})")
    assert err <= rtol, f"{name}: max abs error {err * scale:.3e} = {err:.3e} of scale {scale:.3e} > {rtol}"
    return err


@pytest.fixture(scope="session")
def converted_crab(fixtures_dir, manifest, tmp_path_factory):
    """``(dir, printed)``: ``to-jax`` of crab_full's five user files (LLaMA dir, CLIP dir, BEATs .pt,
    finetune + avs .bin) with the manifest's CLIP taps and LoRA options, once per session."""
    import contextlib
    import io

    from crab_jax.cli.convert_weights.cli import main

    c = manifest["fixtures"]["crab_full"]["config"]
    f = fixtures_dir / "crab_full"
    out = tmp_path_factory.mktemp("conv") / "crab"
    printed = io.StringIO()
    argv = ["to-jax", "--out", out, "--llama", f / "llama_hf", "--clip", f / "clip_vision", "--beats",
            f / "beats_tiny.pt", "--crab", f / "finetune_weights.bin", "--crab", f / "avs_finetune_weights.bin",
            "--bert-config", f / "bert_config", "--select-layers", ",".join(str(x) for x in c["select_layer_list"]),
            "--seed", 7, "--lora-alpha", c["lora"]["lora_alpha"], "--lora-dropout", c["lora"]["lora_dropout"]]
    with contextlib.redirect_stdout(printed):
        code = main([str(a) for a in argv])
    assert code == 0, printed.getvalue()
    return out, printed.getvalue()
