"""The ``pemarith`` console script: thin subcommands over the library.

One table, :data:`COMMANDS`, lists the subcommands; each lives in a module of this package with a
``register(subparsers)`` that adds its parser and a ``run(args)`` that makes one library call
and prints the result. Nothing here imports torch: the model-side commands import
``pemarith.hf`` inside ``run``, so ``pemarith compose`` and ``pemarith --help`` stay fast, and a
missing ``[hf]`` extra is reported, when such a command runs, as the one line that says how to
install it. Errors a user can cause (``PemarithError`` and usage errors) print one line,
``pemarith: error: <message>``, on stderr and exit with status 2 (``pemarith.errors.exit_status``,
the one place that maps errors to exit statuses).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import exit_status, unwind_on_sigterm
from ..version import __version__
from .args import MINUS_HINT, PROG, Parser

# name -> module of this package (in the order of `pemarith --help`)
COMMANDS: dict[str, str] = {
    "compose": "compose",
    "inspect": "inspect",
    "diagnose": "diagnose",
    "bake": "bake",
    "tasks": "tasks",
    "train": "train",
    "eval": "eval",
    "sweep": "sweep",
    "search": "search",
    "reproduce": "reproduce",
    "demo": "demo",
}
CORE_COMMANDS = ("compose", "inspect", "diagnose", "bake")

DESCRIPTION = """\
Compose parameter-efficient modules (PEFT LoRA and (IA)3 adapters) with arithmetic.
`compose`, `inspect`, `diagnose` and `bake` work from the files alone: no base model is loaded and
torch is not imported. The model-side commands (tasks, train, eval, ...) need the
[hf] extra: pip install 'pemarith[hf]'."""

EPILOG = """\
examples:
  pemarith compose -m a=runs/sst2_a -m b=runs/sst2_b -o merged "0.5*a + 0.5*b"
  pemarith compose -m toxic=runs/toxic -o detox -- -toxic
  pemarith compose -m t=runs/task -m x=runs/toxic -o out --set l=0.6 "(1+l)*t - l*x"
  pemarith compose -m a=A -m b=B -o out --mode exact --rank 16 "a + b"
  pemarith inspect runs/sst2_a
  pemarith inspect runs/sst2_a --json
  pemarith diagnose -m a=runs/sst2_a -m b=runs/sst2_b "0.5*a + 0.5*b"
  pemarith bake --base path/to/base -m a=runs/sst2_a -m b=runs/sst2_b -o merged_model "0.5*a + 0.5*b"

Run `pemarith COMMAND --help` for the options of one command."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``pemarith`` parser. With ``argv`` naming a subcommand of :data:`COMMANDS`, only that
    subcommand's module is imported and registered (start-up: ``pemarith inspect`` does not pay
    for the option tables of ``search`` or ``demo``); otherwise (``None``, ``--help``, an unknown
    command) every subcommand is, so the help and the "invalid choice" error list them all.
    Registering a subcommand never imports torch."""
    parser = Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    command = None if argv is None else _first_command(argv)
    for name, module in COMMANDS.items():
        if command not in COMMANDS or name == command:
            importlib.import_module(f"{__name__}.{module}").register(subparsers)
    return parser


def _first_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token
    return None


def _single_threaded_blas() -> None:
    """Default numpy's BLAS to one thread for the core commands (the user's setting wins).

    Their matrices are small (at most d x sum of ranks), and BLAS threads that busy-wait on a
    shared machine are pathological: measured on 2 loaded cores, an SVD recompression of two
    TinyLlama-sized adapters took 20.5 s with 2 OpenBLAS threads and 1.2 s with 1. Only has an
    effect before numpy is imported, so only the console script does it.
    """
    if "numpy" not in sys.modules:
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(var, "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    unwind_on_sigterm()
    if _first_command(argv) in CORE_COMMANDS:
        _single_threaded_blas()
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = MINUS_HINT if args.command == "compose" and extra[0].startswith("-") else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if args.command is None:
        parser.print_help()
        return 2
    if hasattr(args, "verbose"):  # a model-side command: third-party noise off unless --verbose
        from ..hf.quiet import silence_third_party

        silence_third_party(args.verbose, getattr(args, "quiet", False))
    status = exit_status(lambda: args.func(args), args.command)
    if status == 2:  # a user's error, reported: leave as argparse's usage errors do
        raise SystemExit(2)
    return status


__all__ = ["COMMANDS", "build_parser", "exit_status", "main"]
