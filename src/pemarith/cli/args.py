"""Argument types and options that several subcommands share, with one meaning each
(docs/cli.md), and the composition every composing subcommand builds from them."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import PROG, PemarithError, did_you_mean

DTYPES = ("float32", "float16", "bfloat16")


MINUS_HINT = (
    " (an expression that starts with '-' goes after '--', e.g. `pemarith compose -m t=DIR -o OUT -- -t`)"
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        if "required: EXPR" in message:
            message += MINUS_HINT
        fail(f"{message}; see `{self.prog} --help`")


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def module_arg(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare ``PATH`` is named after its directory."""
    name, sep, path = text.partition("=")
    if sep and name.isidentifier():
        if not path:
            raise argparse.ArgumentTypeError(f"-m {text!r} has an empty PATH; use NAME=PATH")
        return name, path
    path = text
    name = os.path.basename(os.path.normpath(path))
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(
            f"cannot name the module at {text!r} after its directory; use -m NAME=PATH"
        )
    return name, path


def var_arg(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` with a finite float VALUE."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--set {text!r} must look like NAME=VALUE, e.g. l=0.3")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--set {text!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"--set {text!r}: the value must be finite")
    return name, number


def module_map(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The ``-m NAME=PATH`` options as ``{NAME: PATH}``; one name for two paths is an error."""
    modules: dict[str, str] = {}
    for name, path in pairs:
        if name in modules and modules[name] != path:
            raise PemarithError(f"-m {name} is given twice ({modules[name]!r} and {path!r})")
        modules[name] = path
    return modules


def rank_arg(text: str) -> int:
    try:
        rank = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rank {text!r} is not an integer") from None
    if rank < 1:
        raise argparse.ArgumentTypeError(f"--rank must be at least 1, got {rank}")
    return rank


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def csv(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError("give at least one name, e.g. query,value")
    return items


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory (default: $PEMARITH_DATA_DIR, ../shared/data or ./data)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the permutation that cuts splits from a file (default 0)",
    )


def add_merge_args(p: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
    """The merge method's options (``--method``, ``--density``, ``--majority-sign``, the DARE
    seed as ``seed_flag``, ``--space``): read back by :func:`merge_options`."""
    p.add_argument(
        "--method",
        default="linear",
        choices=("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"),
        help="merge method: linear arithmetic (default), or PEFT's TIES, DARE and magnitude "
        "pruning on the signed task vectors of each layer (LoRA: needs --mode exact --rank R)",
    )
    p.add_argument(
        "--density",
        type=float,
        metavar="D",
        help="with a method other than linear: the share of each task vector kept, in (0, 1]",
    )
    p.add_argument(
        "--majority-sign",
        choices=("total", "frequency"),
        default="total",
        help="TIES' sign election: by summed value (total, default, as PEFT) or by count",
    )
    p.add_argument(
        seed_flag,
        dest=seed_flag.lstrip("-").replace("-", "_"),
        type=int,
        default=0,
        metavar="S",
        help="seed of DARE's random masks (default 0): the same seed gives the same output",
    )
    p.add_argument(
        "--space",
        choices=("dense", "core"),
        default="dense",
        help="where a method runs on LoRA: each layer's dense update (default, PEFT's entries) "
        "or the core space of the stacked factors (no d_out x d_in matrix; lossless for linear, "
        "fast; needs --mode exact --rank R)",
    )


def merge_options(args: argparse.Namespace, seed_attr: str = "seed") -> dict[str, Any]:
    """``method``, ``density``, ``majority_sign``, ``seed``, ``space`` as :func:`add_merge_args`
    parsed them (the defaults where a command has none)."""
    return {
        "method": getattr(args, "method", "linear"),
        "density": getattr(args, "density", None),
        "majority_sign": getattr(args, "majority_sign", "total"),
        "seed": getattr(args, seed_attr, 0),
        "space": getattr(args, "space", "dense"),
    }


def composition_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The options of a command that composes and writes (``compose``, ``bake``)."""
    p.add_argument(
        "-m",
        "--module",
        dest="modules",
        metavar="NAME=PATH",
        action="append",
        type=module_arg,
        default=[],
        help="an adapter directory and the name the expression calls it (repeat for each "
        "module); a bare PATH is named after its directory",
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help=out_help)
    p.add_argument(
        "--mode",
        choices=("factorwise", "exact"),
        default="factorwise",
        help="LoRA arithmetic on the factors (paper, default) or on Delta W",
    )
    p.add_argument(
        "--rank",
        type=rank_arg,
        metavar="R",
        help="with --mode exact: recompress to rank R by a truncated SVD",
    )
    p.add_argument(
        "--set",
        dest="vars",
        metavar="NAME=VALUE",
        action="append",
        type=var_arg,
        default=[],
        help="bind a free variable, e.g. --set l=0.3",
    )
    p.add_argument(
        "--keep",
        metavar="NAME",
        help="module whose modules_to_save tensors (e.g. a classifier head) to keep "
        "when the coefficients do not sum to 1",
    )
    add_merge_args(p)
    p.add_argument(
        "--base-model",
        metavar="NAME",
        help="the modules' base model, recorded as base_model_name_or_path: pass it when "
        "modules name their base differently (a path, a hub id) but were trained on the same weights",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it is an earlier pemarith output or an empty directory "
        "(anything else is refused)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument(
        "expr",
        nargs="+",
        metavar="EXPR",
        help="the expression, first or last; after '--' it may start with '-'",
    )


_TOKENS = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def bind_modules(text: str, modules: dict[str, str], variables: dict[str, float]) -> dict[str, float]:
    """The normal form of ``text``; an unknown name says how to bind it."""
    from pemarith.expr import normal_form

    known = [*modules, *variables]
    for match in _TOKENS.finditer(text):
        name = match.group("name")
        # A name close to a known one gets normal_form's own "did you mean"; the others are
        # most likely modules without their -m.
        if name and name not in known and not did_you_mean(name, known):
            shown = name if len(name) <= 60 else name[:60] + "..."
            hint = f"bind it with --set {shown}=VALUE (a number) or -m {shown}=PATH (a module)"
            if os.path.isdir(name):
                hint = f"a directory {shown!r} exists here: add -m {shown}={shown}"
            where = text if len(text) <= 120 else text[:120] + "..."
            raise PemarithError(
                f"unknown name {shown!r} at position {match.start() + 1} in {where!r}; {hint}"
            )
    return normal_form(text, list(modules), variables)


def composition(
    args: argparse.Namespace, text: str | None = None
) -> tuple[Any, dict[str, str], dict[str, float]]:
    """The PEM that a command's ``-m``, ``--set``, ``--mode``, ``--rank``, ``--keep`` and EXPR
    describe, with the modules given and the normal form's terms."""
    import pemarith

    text = " ".join(args.expr) if text is None else text
    modules = module_map(args.modules)
    variables: dict[str, float] = {}
    for name, value in args.vars:
        if name in modules:
            raise PemarithError(f"--set {name} names a module given with -m; rename one of them")
        variables[name] = value
    if args.rank is not None and args.mode != "exact":
        raise PemarithError("--rank needs --mode exact (factorwise keeps the inputs' rank)")
    terms = bind_modules(text, modules, variables)
    used = {n: modules[n] for n in terms}
    if args.keep is not None and args.keep not in used:
        raise PemarithError(
            f"--keep {args.keep!r} is not a module of the expression{did_you_mean(args.keep, used)}"
        )
    from pemarith.expr import parse

    present = set(parse(text).identifiers())
    for name in (v for v in variables if v not in present):
        print(f"{PROG}: note: --set {name[:60]} is not used in the expression", file=sys.stderr)
    options = {**merge_options(args), "base_model": getattr(args, "base_model", None)}
    pem = pemarith.compose(text, used, mode=args.mode, rank=args.rank, variables=variables, **options)
    return pem, modules, terms


def note_unused(modules: dict[str, str], terms: dict[str, float]) -> None:
    for name in (n for n in modules if n not in terms):
        print(f"{PROG}: note: -m {name} is not used in the expression", file=sys.stderr)


def require_hf() -> None:
    """Import what the model-side commands need before they start work, so that a missing
    ``[hf]`` extra is one line (``errors.exit_status``) before anything is loaded or written."""
    import importlib

    for name in ("torch", "transformers", "peft"):
        importlib.import_module(name)


def note(message: str) -> None:
    """A note on stderr (never an error: the command goes on)."""
    print(f"{PROG}: note: {message}", file=sys.stderr)


class Deprecated(argparse.Action):
    """An old spelling of an option: it still works, stores like the new one, and says the new
    name on stderr (kept for one release; hidden from --help). It has no default of its own
    (``argparse.SUPPRESS``): the new option's default is the one that applies when neither is
    given, whichever was registered first."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any):
        self.new = new
        kwargs.setdefault("help", argparse.SUPPRESS)
        kwargs["default"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        note(f"{option_string} is now {self.new}; the old spelling goes in the next release")
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_hardware(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` (pemarith.hf.hardware), shared by the model-side commands."""
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="auto (default: a GPU when torch sees one, else the CPU), cpu, cuda, cuda:N or mps",
    )
    p.add_argument(
        "--dtype",
        dest="model_dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="the model's dtype (default auto: bfloat16 on a GPU that has it, else float32)",
    )


def add_revision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--revision",
        metavar="REV",
        help="with a hub id as --model: the branch, tag or commit to load (owner/name@REV)",
    )


def model_name(args: argparse.Namespace) -> str:
    """``--model``, pinned to ``--revision`` (``owner/name@REV``); a revision of anything but a
    hub id is an error."""
    revision = getattr(args, "revision", None)
    if not revision:
        return args.model
    if os.path.exists(os.path.expanduser(args.model)) or "/" not in args.model or "@" in args.model:
        raise PemarithError(
            f"--revision applies to a hub id owner/name; {args.model!r} is not one "
            "(a local directory or a short name has no revisions)"
        )
    return f"{args.model}@{revision}"


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party warnings (PEFT's, transformers', torch's), hidden by default",
    )
