"""The data commands' shared flags: a config that cannot be loaded is one line on stderr, status 2."""

from __future__ import annotations

import argparse

import pytest

from crab_jax.cli.data_args import add_common_arguments, parse_run


def parser():
    p = argparse.ArgumentParser(prog="check")
    add_common_arguments(p)
    return p


@pytest.mark.parametrize("spec, needle", [("configs/nope.py", "no such config file 'configs/nope.py'"),
                                          ("configs/tpu_v4.py:nostage", "nostage")])
def test_unloadable_config_is_one_line_and_status_2(capsys, spec, needle):
    with pytest.raises(SystemExit) as e:
        parse_run(parser(), ["--config", spec])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --config ") and needle in err[0]
