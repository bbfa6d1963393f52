"""``python -m crab_jax.infer``'s flags (crab_jax.cli.infer)."""

from __future__ import annotations

import pytest

from crab_jax.cli.infer import parse_args
from crab_jax.config.loader import load_config


def test_config_overrides_take_the_trainer_spelling_too():
    args = parse_args(["--config", "configs/tiny.py", "--workdir", "w", "--set", "data.seq_len=64",
                       "--config.eval.batch_size=8", "--config.data.source=random"])
    assert args.set == ["data.seq_len=64", "eval.batch_size=8", "data.source=random"]
    config = load_config(args.config, args.set)
    assert (config.data.seq_len, config.eval.batch_size, config.data.source) == (64, 8, "random")
    with pytest.raises(SystemExit):
        parse_args(["--config", "configs/tiny.py", "--workdir", "w", "--bogus=1"])
