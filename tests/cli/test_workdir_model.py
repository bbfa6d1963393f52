"""A run config stored by an earlier crab_jax (before keys were added) still loads: every key the
schema declared since is taken at its default, every stored value is kept."""

from __future__ import annotations

import copy

from crab_jax.cli.workdir_model import _tuples, with_schema_defaults
from crab_jax.config.changes import flat_config
from crab_jax.config.schema import get_config
from crab_jax.training.setup import resolve


def test_an_older_stored_config_gains_the_new_keys_at_their_defaults_and_keeps_its_values(caplog):
    defaults = _tuples(get_config().to_dict())
    stored = copy.deepcopy(defaults)
    stored["seed"] = defaults["seed"] + 7
    new_key, new_section = sorted(defaults["metrics"])[0], sorted(k for k, v in defaults.items() if isinstance(v, dict))[0]
    del stored["metrics"][new_key]
    del stored[new_section]
    with caplog.at_level("INFO", logger="crab_jax.infer"):
        merged = with_schema_defaults(stored, source="old-run")
    assert flat_config(merged).keys() == flat_config(defaults).keys()
    assert merged["seed"] == defaults["seed"] + 7
    assert merged["metrics"][new_key] == defaults["metrics"][new_key]
    assert merged[new_section] == defaults[new_section]
    assert f"metrics.{new_key}" in caplog.text and "old-run" in caplog.text
    resolve(merged)  # passes the schema check
