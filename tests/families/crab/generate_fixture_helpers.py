"""Shared pieces of the tests against the fixture's ``generate/`` folder (the original's greedy
generation): where its inputs are, what it expects per sample, the comparison rules of the
fixture README section 6."""

from __future__ import annotations

import json
import pathlib

import numpy as np


def generate_manifest(manifest) -> dict:
    return manifest["fixtures"]["generate"]


def media_root(fixtures_dir: pathlib.Path) -> pathlib.Path:
    """The media the quick-start input's relative paths point into (``shared/media`` next to the
    fixtures' ``shared/fixtures/crab``)."""
    return fixtures_dir.parents[1] / "media"


def quick_start_input(fixtures_dir: pathlib.Path) -> pathlib.Path:
    return fixtures_dir / "generate" / "quick_start_input.json"


def input_items(fixtures_dir: pathlib.Path) -> list[dict]:
    return json.loads(quick_start_input(fixtures_dir).read_text())


def step_logit_tolerance(manifest) -> float:
    """atol relative to max|step logits| (README section 6, "How to compare")."""
    return float(generate_manifest(manifest)["suggested_tolerance"]["suggested_atol_relative_to_max_abs_of_reference"])


def compared_steps(sample: dict, n: int) -> int:
    """Steps compared exactly: those before the first near-tie step (all when there is none)."""
    tie = sample.get("first_near_tie_step")
    return n if tie is None else min(int(tie), n)


def expected_text(sample: dict) -> str:
    """What the original writes for the sample: AVVP without special tokens, the rest with."""
    return sample["decoded_skip_special_tokens"] if sample["task"] == "avvp" else sample["decoded"]


def max_abs_error_ratio(actual, reference) -> float:
    """max|actual - reference| / max|reference|."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(actual - reference).max()) / max(float(np.abs(reference).max()), 1e-12)
