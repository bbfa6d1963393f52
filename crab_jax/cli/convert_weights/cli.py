"""``crab-convert-weights`` / ``python -m tools.convert_weights``: PyTorch / HF <-> crab_jax.

The subcommands and the options every model family has are here; ``--family NAME``
(default ``crab``) picks the family whose :class:`~crab_jax.checkpoints.convert.family_converter.FamilyConverter`
adds the rest (its sources, formats and help texts) and does the conversion.

Exit status: 0 on success, 2 when an input does not match (each offending key is named),
1 on any other error. Nothing is left half-written: outputs appear only when complete.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from crab_jax import families
from crab_jax.checkpoints.convert.family_converter import FamilyConverter
from crab_jax.checkpoints.convert.inspection import inspect_path
from crab_jax.checkpoints.convert.mapping import MappingError
from crab_jax.checkpoints.convert.output import (DTYPE_CHOICES, TOKENIZER_DIR, check_tokenizer_dir, output_dtype,
                                                 summary, write_checkpoint)
from crab_jax.checkpoints.sam2.converter import CONVERTER as SAM2_CONVERTER

DEFAULT_FAMILY = "crab"
# Shared models converted on their own, selected with --family like a family's weights.
SHARED_MODEL_CONVERTERS = {"sam2": SAM2_CONVERTER}
COMMANDS = ("to-jax", "to-torch", "from-run", "inspect")
_RAW = argparse.RawDescriptionHelpFormatter


def _add_family_argument(parser: argparse.ArgumentParser, default=DEFAULT_FAMILY) -> None:
    """``--family``: before the subcommand or after it (``default=SUPPRESS`` there, so a
    subcommand that does not repeat it keeps the one given before)."""
    parser.add_argument("--family", metavar="NAME", default=default,
                        choices=families.names() + tuple(SHARED_MODEL_CONVERTERS),
                        help=f"model family whose weights are converted (default: {DEFAULT_FAMILY}; "
                        f"known: {', '.join(families.names())}), or a shared model: "
                        f"{', '.join(SHARED_MODEL_CONVERTERS)}")


def _add_tokenizer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", metavar="DIR", default=None,
                        help=f"tokenizer folder (Hugging Face) to store with the weights as <out>/{TOKENIZER_DIR}/ "
                             "(python -m crab_jax.infer --weights <out> then needs no --tokenizer)")


def family_converter(argv: Sequence[str]) -> FamilyConverter:
    """The converter of the family ``--family`` names in ``argv`` (read before the full parse,
    since that family adds the subcommands' options)."""
    pre = argparse.ArgumentParser(prog="crab-convert-weights", add_help=False, allow_abbrev=False)
    _add_family_argument(pre)
    name = pre.parse_known_args(argv)[0].family
    converter = SHARED_MODEL_CONVERTERS.get(name) or families.get(name).converter
    if converter is None:
        pre.error(f"--family {name}: this model family has no weight converter")
    return converter


def build_parser(converter: FamilyConverter) -> argparse.ArgumentParser:
    texts = converter.texts
    p = argparse.ArgumentParser(prog="crab-convert-weights", description=texts.description, formatter_class=_RAW)
    _add_family_argument(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    family = argparse.ArgumentParser(add_help=False)
    _add_family_argument(family, default=argparse.SUPPRESS)

    j = sub.add_parser("to-jax", parents=[family], help="torch / HF files -> crab_jax checkpoint",
                       epilog=texts.to_jax_epilog, formatter_class=_RAW,
                       description=f"Convert torch / HF weights into a crab_jax checkpoint (params + "
                       f"{converter.config_file}).")
    j.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    j.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="output dtype of floating tensors (default: keep the source dtype)")
    converter.add_to_jax_arguments(j)
    _add_tokenizer_argument(j)
    j.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    t = sub.add_parser("to-torch", parents=[family], help="crab_jax checkpoint -> torch / HF files",
                       epilog=texts.to_torch_epilog, description=texts.to_torch_description, formatter_class=_RAW)
    t.add_argument("checkpoint", help=f"crab_jax checkpoint directory (params/ + {converter.config_file})")
    converter.add_to_torch_arguments(t)
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    r = sub.add_parser("from-run", parents=[family], help="a crab_jax training run's weights -> crab_jax checkpoint",
                       epilog=texts.from_run_epilog, formatter_class=_RAW)
    r.add_argument("workdir", help="the training run's --workdir (its latest committed checkpoint is used)")
    r.add_argument("--base", required=True, help="converted checkpoint holding every other weight "
                                                 "(the run's model.init_checkpoint)")
    r.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    r.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="output dtype of every float array (default: each array keeps the base's dtype)")
    _add_tokenizer_argument(r)
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    i = sub.add_parser("inspect", parents=[family],
                       help="list tensors, shapes, dtypes, parameter count, mapping matches",
                       description="Describe any supported checkpoint: torch .bin/.pt, .safetensors, an HF "
                       "folder, or a crab_jax checkpoint.")
    i.add_argument("path", help="file or directory")
    i.add_argument("--summary", action="store_true", help="counts and mapping matches only, no tensor list")
    return p


def run_to_jax(converter: FamilyConverter, args) -> None:
    if args.tokenizer:
        check_tokenizer_dir(args.tokenizer)  # before the conversion's work
    converted = converter.to_jax(args, output_dtype(args.dtype))
    print(summary(converted))
    write_checkpoint(args.out, converted, converter.config_file, overwrite=args.overwrite,
                     tokenizer_dir=args.tokenizer)
    print(f"wrote {args.out} (params/ + {converter.config_file}{_tokenizer_note(args)})")


def _tokenizer_note(args) -> str:
    return f" + {TOKENIZER_DIR}/" if args.tokenizer else ""


def run_to_torch(converter: FamilyConverter, args) -> None:
    print(converter.to_torch(args))


def run_from_run(converter: FamilyConverter, args) -> None:
    if args.tokenizer:
        check_tokenizer_dir(args.tokenizer)
    converted, step = converter.from_run(args.workdir, args.base, output_dtype(args.dtype))
    print(summary(converted))
    write_checkpoint(args.out, converted, converter.config_file, overwrite=args.overwrite,
                     tokenizer_dir=args.tokenizer)
    print(f"wrote {args.out} (params/ + {converter.config_file}{_tokenizer_note(args)}): {args.base} with step "
          f"{step} of {args.workdir}")


def run_inspect(converter: FamilyConverter, args) -> None:
    print(inspect_path(args.path, converter, show_tensors=not args.summary))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    converter = family_converter(argv)
    args = build_parser(converter).parse_args(argv)
    run = {"to-jax": run_to_jax, "to-torch": run_to_torch, "from-run": run_from_run,
           "inspect": run_inspect}[args.command]
    try:
        run(converter, args)
    except MappingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
