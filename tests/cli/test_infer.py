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


@pytest.mark.parametrize("case", ["unknown_key", "missing_config", "missing_workdir"])
def test_bad_command_lines_fail_in_one_line_naming_the_key_or_path(case, tmp_path, capsys):
    from crab_jax.cli.infer import main
    from crab_jax.config.command_line import USAGE_EXIT
    from tests.train_helpers import REPO

    config, workdir = str(REPO / "configs" / "tiny.py"), str(tmp_path)
    extra = []
    if case == "unknown_key":
        extra, named = ["--config.train.nonexistent=1"], "train.nonexistent"
    elif case == "missing_config":
        config = named = str(tmp_path / "no_such_config.py")
    else:
        workdir = named = str(tmp_path / "no_such_run")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config, "--workdir", workdir, *extra])
    assert exit_info.value.code == USAGE_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "Traceback" not in err, err
