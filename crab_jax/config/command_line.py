"""The absl commands' command lines (``python -m crab_jax.train`` / ``crab_jax.aot_compile``), checked
before any JAX work: each problem is one line on stderr naming the key or path and the fix, exit 2.

ml_collections' ``config_flags`` raises a KeyError -> AttributeError chain for an unknown
``--config.a.b`` while absl parses (before the schema check could run), buries a missing file in
an OSError chain, and absl prints a type error on two lines with status 1. So
:func:`flags_parser` (absl ``app.run(main, flags_parser=...)``) first reads the config file and
the override names itself (:mod:`crab_jax.config.loader`), then lets absl parse, then runs the
schema check and looks at the workdir.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Callable, Sequence

from absl import flags

from crab_jax.config.check import ConfigError, check_against_schema
from crab_jax.config.loader import load_config_file, override_key_error
from crab_jax.io.paths import is_remote

USAGE_EXIT = 2  # what argparse and the data commands exit with for a bad command line


def config_arguments(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
    """``--flag FILE`` (None when absent: the flag's default) and every ``--flag.KEY[=VALUE]`` key in
    ``argv`` (absl spellings: one or two dashes, ``=`` or a separate value, ``--noflag.KEY``)."""
    spec, keys = None, []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name == flag:
            spec = value if eq else (args[i + 1] if i + 1 < len(args) else None)
        elif name.startswith(flag + "."):
            keys.append(name[len(flag) + 1:])
        elif name.startswith(f"no{flag}."):
            keys.append(name[len(flag) + 3:])
    return spec, keys


def workdir_error(workdir: str) -> str | None:
    """Why a local ``workdir`` cannot hold a run (a file, or a folder that cannot be made there), or
    None; ``gs://`` workdirs are left to the object store."""
    if is_remote(workdir):
        return None
    path = pathlib.Path(workdir).expanduser().absolute()
    fix = "choose another --workdir"
    if path.exists():
        if not path.is_dir():
            return f"--workdir {workdir}: {path} is a file, not a folder ({fix} or move the file away)"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"--workdir {workdir}: the folder {path} is not writable by this user ({fix})"
        return None
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"--workdir {workdir}: cannot be created, {parent} is a file, not a folder ({fix})"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"--workdir {workdir}: cannot be created, {parent} is not writable by this user ({fix})"
    return None


_FLAG_VALUE_ERROR = re.compile(r"^flag --(?P<name>[^=]+)=(?P<value>.*?): (?P<reason>.*)$", re.S)


def flag_error_message(error: flags.Error, config, flag: str = "config") -> str:
    """absl's message for ``error`` on one line; a bad ``--config.KEY`` value also gets the type the
    config holds there (``config``: the loaded config, or None)."""
    text = " ".join(str(error).split())
    m = _FLAG_VALUE_ERROR.match(text)
    if m is None:
        return text
    name, value, reason = m["name"], m["value"], m["reason"]
    message = f"--{name}={value}: {reason}"
    if config is not None and name.startswith(flag + "."):
        node = config
        for part in name[len(flag) + 1:].split("."):
            node = node[part]
        message += f" ({name[len(flag) + 1:]} expects type {type(node).__name__}, now {node!r})"
    return message


def fail(message: str) -> None:
    """The one line on stderr and exit status 2."""
    sys.stderr.write("error: " + " ".join(message.split()) + "\n")
    sys.exit(USAGE_EXIT)


def check_config_arguments(argv: Sequence[str], *, default_config: str, flag: str = "config"):
    """The config file ``argv`` names (or ``default_config``), loaded, after checking that every
    ``--flag.KEY`` override names one of its keys; raises :class:`ConfigError` (one-line message)."""
    spec, keys = config_arguments(argv, flag)
    config = load_config_file(spec or default_config)
    for key in keys:
        problem = override_key_error(config, key)
        if problem:
            raise ConfigError(f"--{flag}.{key}: {problem}")
    return config


def parse_checked(argv: Sequence[str], config, *, default_config: str, flag: str = "config",
                  workdir_flag: str | None = None, flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's parse of ``argv`` into ``flag_values``, then the schema check of the parsed config and the
    workdir check; returns the remaining argv. ``config``: :func:`check_config_arguments`' result (for
    the expected type of a bad value). Raises :class:`ConfigError` (one-line message)."""
    try:
        rest = flag_values(list(argv))
    except flags.Error as e:
        raise ConfigError(flag_error_message(e, config, flag)) from None
    spec, _ = config_arguments(argv, flag)
    check_against_schema(flag_values[flag].value, source=f"--{flag} {spec or default_config}")
    if workdir_flag is not None:
        workdir = flag_values[workdir_flag].value
        if not workdir:
            raise ConfigError(f"--{workdir_flag} is required (checkpoints and metrics go there): "
                              f"pass --{workdir_flag}=DIR")
        problem = workdir_error(workdir)
        if problem:
            raise ConfigError(problem)
    return rest


def _one_line_or_exit(fn, argv: Sequence[str]):
    try:
        return fn()
    except ConfigError as e:
        fail(str(e))
    except Exception as e:  # anything ml_collections / absl raise while parsing: still one line
        fail(f"command line {' '.join(argv[1:])!r}: {type(e).__name__}: {e}")


def checked_command_line(*, default_config: str, flag: str = "config", workdir_flag: str | None = None,
                         argv: Sequence[str] | None = None) -> Callable[[list[str]], list[str]]:
    """Checks ``argv`` (``sys.argv``)'s config file and override keys now, and returns absl
    ``app.run``'s ``flags_parser`` for the rest (types, unknown flags, schema, workdir). On a problem,
    either prints its one line on stderr and exits with status 2 (never a traceback).

    Call it before ``config_flags.DEFINE_config_file``: defining the flag already parses the default
    file with ``sys.argv``'s overrides, which is where ml_collections' KeyError chain comes from."""
    argv = list(sys.argv if argv is None else argv)
    config = _one_line_or_exit(lambda: check_config_arguments(argv, default_config=default_config, flag=flag), argv)

    def parse(args: list[str]) -> list[str]:
        return _one_line_or_exit(lambda: parse_checked(args, config, default_config=default_config, flag=flag,
                                                       workdir_flag=workdir_flag), args)

    return parse
