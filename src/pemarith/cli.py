"""The ``pemarith`` console script: thin subcommands over the library.

Each subcommand parses its arguments, makes one library call and prints the result. Errors
a user can cause (``PemarithError`` and usage errors) print one line,
``pemarith: error: <message>``, on stderr and exit with status 2; nothing is written.

The core subcommands (``compose``, ``inspect``) never import torch: the hf subcommands are
registered from ``pemarith.hf.commands`` only when the command line may need them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pemarith import __version__
from pemarith.errors import PemarithError, did_you_mean

PROG = "pemarith"
CORE_COMMANDS = ("compose", "inspect", "diagnose", "bake")
HF_COMMANDS = ("tasks", "train", "eval", "sweep", "search", "reproduce")
DTYPES = ("float32", "float16", "bfloat16")
MINUS_HINT = (" (an expression that starts with '-' goes after '--', e.g. "
              "`pemarith compose -m t=DIR -o OUT -- -t`)")

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

COMPOSE_DESCRIPTION = """\
Compose adapters by an arithmetic expression and write a PEFT adapter directory.

The expression is linear in the modules: sums, differences, unary minus, scalar products
and quotients, parentheses, and free variables bound with --set. It is reduced to a normal
form sum_i c_i * theta_i, which is printed.

modes (LoRA):
  factorwise  the paper's method (default): A = sum |c_i| A_i, B = sum c_i B_i. Negation
              flips B only. A lone c*t scales the update by c*|c| (both factors are
              scaled) and sums carry cross terms B_i A_j: that is the paper's method.
              Needs equal ranks.
  exact       Delta W = sum c_i s_i B_i A_i exactly, stored by concatenating along the rank
              (rank = sum of ranks). With --rank R, recompressed to rank R by a truncated
              SVD computed from the factors; the per-layer relative error is reported.
(IA)3 modules compose on the offset from the identity: l = 1 + sum c_i (l_i - 1)."""

COMPOSE_EPILOG = """\
examples:
  pemarith compose -m a=runs/a -m b=runs/b -o merged "0.5*a + 0.5*b"
  pemarith compose "0.5*a + 0.5*b" -m a=runs/a -m b=runs/b -o merged
  pemarith compose -m toxic=runs/toxic -o detox -- -toxic
  pemarith compose -m a=A -m b=B -o out --set l=0.3 "l*a + (1-l)*b"
  pemarith compose -m a=A -m b=B -o out --mode exact --rank 16 "a - b"

An expression that starts with '-' must come after '--'. Quote expressions that
contain '*', '(' or spaces so that the shell leaves them alone."""

INSPECT_DESCRIPTION = """\
Describe one PEFT adapter directory: kind, base model, target modules, rank, alpha,
parameter count and the norm of each layer's weights."""

DIAGNOSE_DESCRIPTION = """\
Measure modules against each other from the adapter files alone (no base model).

In each layer, module i has an update D_i (LoRA: s_i B_i A_i, computed from the factors
without forming B A; (IA)3: l_i - 1). Printed:
  update norm        ||D_i||_F over all layers
  cosine similarity  <D_i, D_j> / (||D_i|| ||D_j||), whole modules and per layer
With an expression sum_i c_i theta_i, also its interference:
  retained norm      ||sum c_i D_i|| / sum |c_i| ||D_i||, in [0, 1]: 1 when the weighted
                     updates point the same way, near 0 when they cancel
  factorwise         LoRA factorwise (the paper's mode) computes F = sum_ij c_i |c_j| s_i B_i A_j,
                     exact mode E = sum_i c_i D_i. Printed: cos(F, E) (1: factorwise only
                     rescales the exact update) and the cross-term ratio ||terms with i != j||
                     / ||terms with i = j||. Modules that share their A initialisation have
                     cross terms like their own terms (cos near 1); modules with different
                     ones add products of unrelated factors."""

DIAGNOSE_EPILOG = """\
examples:
  pemarith diagnose -m a=runs/a -m b=runs/b
  pemarith diagnose -m a=runs/a -m b=runs/b --set l=0.5 "l*a + (1-l)*b"
  pemarith diagnose -m a=runs/a -m b=runs/b "a + b" --layers
  pemarith diagnose -m a=runs/a -m b=runs/b --json"""

BAKE_DESCRIPTION = """\
Merge a module, or a composition of modules, into a base model's weights and write the result
as a plain checkpoint directory (no PEFT needed to load it).

BASE is a Hugging Face checkpoint directory with model.safetensors, or safetensors shards and
model.safetensors.index.json. It is read and written one shard, and one tensor, at a time;
torch is not needed. Adapted layers get W + s B A (LoRA) or PEFT's (IA)3 rescaling; the
modules_to_save tensors (e.g. a classifier head) replace the base's, or are added; every other
tensor is copied byte for byte and the other files (config, tokenizer) are copied as they are.
Other weight files (*.bin, *.gguf, ...) and onnx/ or openvino/ exports are left out: they
would hold unmerged weights. Other folders (e.g. a sentence-transformers Dense layer) are kept.
The expression and its options (--mode, --rank, --set, --keep) are those of `compose`."""

BAKE_EPILOG = """\
examples:
  pemarith bake --base models/minilm -m a=runs/sst2_a -o minilm_sst2 a
  pemarith bake --base models/smollm2 -m t=runs/t1 -m x=runs/toxic -o smollm2_detox \\
      --set l=0.4 "(1+l)*t - l*x"
  pemarith bake --base models/minilm -m a=A -m b=B -o out --mode exact "0.5*a + 0.5*b" """


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        if "required: EXPR" in message:
            message += MINUS_HINT
        _fail(f"{message}; see `{self.prog} --help`")


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ----------------------------------------------------------------------------- arg types


def _module_arg(text: str) -> tuple[str, str]:
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


def _var_arg(text: str) -> tuple[str, float]:
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


def _rank_arg(text: str) -> int:
    try:
        rank = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rank {text!r} is not an integer") from None
    if rank < 1:
        raise argparse.ArgumentTypeError(f"--rank must be at least 1, got {rank}")
    return rank


# ----------------------------------------------------------------------------- compose


def _add_compose(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compose",
        help="compose adapters by an arithmetic expression",
        description=COMPOSE_DESCRIPTION,
        epilog=COMPOSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _composition_args(p, "output adapter directory (must not exist unless --force)")
    p.add_argument("--dtype", choices=DTYPES,
                   help="dtype of the written weights (default: that of the inputs)")
    p.set_defaults(func=cmd_compose)


def _composition_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The options of a command that composes and writes (``compose``, ``bake``)."""
    p.add_argument(
        "-m", "--module", dest="modules", metavar="NAME=PATH", action="append",
        type=_module_arg, default=[],
        help="an adapter directory and the name the expression calls it (repeat for each "
        "module); a bare PATH is named after its directory",
    )
    p.add_argument("-o", "--out", required=True, metavar="OUT", help=out_help)
    p.add_argument("--mode", choices=("factorwise", "exact"), default="factorwise",
                   help="LoRA arithmetic on the factors (paper, default) or on Delta W")
    p.add_argument("--rank", type=_rank_arg, metavar="R",
                   help="with --mode exact: recompress to rank R by a truncated SVD")
    p.add_argument("--set", dest="vars", metavar="NAME=VALUE", action="append",
                   type=_var_arg, default=[], help="bind a free variable, e.g. --set l=0.3")
    p.add_argument("--keep", metavar="NAME",
                   help="module whose modules_to_save tensors (e.g. a classifier head) to keep "
                   "when the coefficients do not sum to 1")
    p.add_argument("--method", default="linear",
                   choices=("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"),
                   help="merge method: linear arithmetic (default), or PEFT's TIES, DARE and magnitude "
                   "pruning on the signed task vectors of each layer (LoRA: needs --mode exact --rank R)")
    p.add_argument("--density", type=float, metavar="D",
                   help="with a method other than linear: the share of each task vector kept, in (0, 1]")
    p.add_argument("--majority-sign", choices=("total", "frequency"), default="total",
                   help="TIES' sign election: by summed value (total, default, as PEFT) or by count")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of DARE's random masks (default 0): the same seed gives the same output")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an earlier pemarith output or an empty directory "
                   "(anything else is refused)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("expr", nargs="+", metavar="EXPR",
                   help="the expression, first or last; after '--' it may start with '-'")


# Numbers first, so that the exponent of ``1e5`` is not read as a name.
_TOKENS = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def _bind_modules(text: str, modules: dict[str, str], variables: dict[str, float]) -> dict[str, float]:
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
            raise PemarithError(f"unknown name {shown!r} at position {match.start() + 1} "
                                f"in {where!r}; {hint}")
    return normal_form(text, list(modules), variables)


def _composition(args: argparse.Namespace) -> tuple[Any, dict[str, str], dict[str, float]]:
    """The PEM that a command's ``-m``, ``--set``, ``--mode``, ``--rank``, ``--keep`` and EXPR
    describe, with the modules given and the normal form's terms."""
    import pemarith

    text = " ".join(args.expr)
    modules = module_map(args.modules)
    variables: dict[str, float] = {}
    for name, value in args.vars:
        if name in modules:
            raise PemarithError(f"--set {name} names a module given with -m; rename one of them")
        variables[name] = value
    if args.rank is not None and args.mode != "exact":
        raise PemarithError("--rank needs --mode exact (factorwise keeps the inputs' rank)")
    terms = _bind_modules(text, modules, variables)
    used = {n: modules[n] for n in terms}
    if args.keep is not None and args.keep not in used:
        raise PemarithError(
            f"--keep {args.keep!r} is not a module of the expression{did_you_mean(args.keep, used)}"
        )
    from pemarith.expr import parse

    present = set(parse(text).identifiers())
    for name in (v for v in variables if v not in present):
        print(f"{PROG}: note: --set {name[:60]} is not used in the expression", file=sys.stderr)
    method = getattr(args, "method", "linear")
    options = {"method": method, "density": getattr(args, "density", None),
               "majority_sign": getattr(args, "majority_sign", "total"), "seed": getattr(args, "seed", 0)}
    pem = pemarith.compose(text, used, mode=args.mode, rank=args.rank, variables=variables, **options)
    return pem, modules, terms


def _note_unused(modules: dict[str, str], terms: dict[str, float]) -> None:
    for name in (n for n in modules if n not in terms):
        print(f"{PROG}: note: -m {name} is not used in the expression", file=sys.stderr)


def cmd_compose(args: argparse.Namespace) -> int:
    from pemarith.expr import format_terms

    pem, modules, terms = _composition(args)
    report = pem.save(args.out, mode=args.mode, rank=args.rank, force=args.force,
                      keep=args.keep, dtype=args.dtype, protect=tuple(modules.values()))
    _note_unused(modules, terms)
    (c,) = terms.values() if len(terms) == 1 else (1.0,)
    kind = str(getattr(getattr(pem, "kind", None), "name", "")).lower()
    if args.mode == "factorwise" and kind == "lora" and abs(c) not in (0.0, 1.0):
        # SPEC: users must be told; the paper's method scales both factors.
        print(f"{PROG}: note: factorwise scales both A and B, so the weight update is scaled by "
              f"c*|c| = {c * abs(c):g}; use --mode exact to scale it by {c:g}", file=sys.stderr)

    errors = dict(getattr(report, "layer_errors", None) or {})
    summary: dict[str, Any] = {
        "normal_form": format_terms(report.terms),
        "terms": dict(report.terms),
        "mode": report.mode,
        "rank": report.rank,
        **pem.merge_spec(None).describe(),
        "path": str(report.path),
        "seconds": report.seconds,
    }
    if errors:
        summary["max_layer_error"] = max(errors.values())
        summary["mean_layer_error"] = sum(errors.values()) / len(errors)
        summary["layer_errors"] = errors
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0

    print(f"composed  {summary['normal_form']}")
    rank = f", rank {report.rank}" if report.rank is not None else ""
    svd = ", truncated SVD" if errors else ""
    print(f"mode      {report.mode}{rank}{svd}")
    if summary["method"] != "linear":
        options = ", ".join(f"{k} {v}" for k, v in summary.items() if k in ("density", "majority_sign", "seed"))
        print(f"method    {summary['method']} ({options})")
    print(f"output    {report.path}")
    if errors:
        print(f"SVD error relative Frobenius per layer: max {summary['max_layer_error']:.3g}, "
              f"mean {summary['mean_layer_error']:.3g} ({len(errors)} layers)")
    if report.seconds is not None:
        print(f"time      {report.seconds:.3g} s")
    return 0


# ----------------------------------------------------------------------------- inspect


def _add_inspect(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="describe one adapter directory",
        description=INSPECT_DESCRIPTION,
        epilog="examples:\n  pemarith inspect runs/sst2_a\n  pemarith inspect runs/sst2_a --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="a PEFT adapter directory")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_inspect)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(str(v) for v in value) if value else "-"
    if value is None or value == {}:
        return "-"
    return str(value)


def _table(rows: dict[str, Any], first: str) -> list[str]:
    """A dict of rows (each a number or a dict of columns) as aligned text lines."""
    columns: list[str] = []
    for row in rows.values():
        for col in row if isinstance(row, dict) else ["norm"]:
            if col not in columns:
                columns.append(col)
    cells = [[first, *columns]]
    for name, row in rows.items():
        row = row if isinstance(row, dict) else {"norm": row}
        cells.append([name, *(_fmt(row.get(c)) for c in columns)])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for r in cells:
        first = r[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:]))
        lines.append(f"  {first}  {rest}".rstrip())
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    from pemarith.io import inspect_adapter

    info = inspect_adapter(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    tables = {k: v for k, v in info.items() if isinstance(v, dict) and v}
    fields = {k: v for k, v in info.items() if k not in tables}
    width = max((len(k) for k in fields), default=0)
    for key, value in fields.items():
        print(f"{key.replace('_', ' ').ljust(width)}  {_fmt(value)}")
    for key, rows in tables.items():
        if all(isinstance(v, (int, float, dict)) for v in rows.values()):
            print(f"{key.replace('_', ' ')}:")
            print("\n".join(_table(rows, "layer" if "layer" in key else "tensor")))
        else:
            print(f"{key.replace('_', ' ')}: {json.dumps(rows, default=str)}")
    return 0


# ----------------------------------------------------------------------------- diagnose


def _add_diagnose(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="similarity and interference of modules (no base model)",
        description=DIAGNOSE_DESCRIPTION,
        epilog=DIAGNOSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", "--module", dest="modules", metavar="NAME=PATH", action="append",
                   type=_module_arg, default=[],
                   help="an adapter directory and its name (repeat for each module)")
    p.add_argument("--set", dest="vars", metavar="NAME=VALUE", action="append",
                   type=_var_arg, default=[], help="bind a free variable of EXPR, e.g. --set l=0.3")
    p.add_argument("--layers", action="store_true", help="also print a table with one row per layer")
    p.add_argument("--json", action="store_true", help="print everything, per layer too, as JSON")
    p.add_argument("expr", nargs="*", metavar="EXPR",
                   help="optional composition whose interference to measure (-m modules it does "
                   "not use are still compared); after '--' it may start with '-'")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    import pemarith
    from pemarith.diagnostics import diagnose
    from pemarith.expr import format_terms

    modules = module_map(args.modules)
    if not modules:
        raise PemarithError("no modules: give each adapter directory with -m NAME=PATH")
    variables = dict(args.vars)
    text = " ".join(args.expr)
    if text:
        terms = _bind_modules(text, modules, variables)
        pem = pemarith.compose(text, {n: modules[n] for n in terms}, mode="exact", variables=variables)
        shown = format_terms(dict(pem.terms))
        for name in (n for n in modules if n not in terms):  # compared, with coefficient 0
            pem = pem + 0 * pemarith.load(modules[name], name)
    elif variables:
        raise PemarithError("--set binds a variable of EXPR, but no expression was given")
    else:
        pem = sum(pemarith.load(path, name) for name, path in modules.items())
    d = diagnose(pem)
    if args.json:
        print(json.dumps({"expression": shown if text else None,
                          **d.to_json()}, indent=2))
        return 0
    names = list(d.names)
    print(f"modules      {', '.join(names)} ({d.kind}, {len(d.gram)} layers)")
    print("update norm  " + "  ".join(f"{n} {v:.4g}" for n, v in d.norms().items())
          + "   (||D_i||_F, all layers)")
    if len(names) > 1:
        cos = d.cosine()
        print("cosine similarity of the updates, whole modules:")
        print("\n".join(_table({a: {b: float(cos[i, j]) for j, b in enumerate(names)}
                                for i, a in enumerate(names)}, "")))
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                per = d.pair_cosines(a, b)
                lo, hi = min(per, key=per.get), max(per, key=per.get)
                mid = statistics.median(per.values())
                print(f"per layer, {a}~{b}: min {per[lo]:.3g} ({lo}), median {mid:.3g}, "
                      f"max {per[hi]:.3g} ({hi})")
    if text:
        print(f"composition  {shown}")
        r = d.retained()
        print(f"retained norm  {_fmt(r)}   ||sum c_i D_i|| / sum |c_i| ||D_i|| (1: aligned; "
              "near 0: the terms cancel)")
        if d.factorwise:
            print(f"factorwise     cos(F, E) {_fmt(d.factorwise_cosine())}, cross terms "
                  f"{_fmt(d.cross_ratio())} of the own terms (F: factorwise, E: exact update)")
        elif d.kind == "LORA":
            print("factorwise     -   (the ranks differ: only exact mode applies)")
    if args.layers:
        rows = {}
        for layer in d.gram:
            row: dict[str, Any] = {f"|{n}|": v for n, v in d.norms(layer).items()}
            c = d.cosine(layer)
            row.update({f"cos {a}~{b}": float(c[i, j]) for i, a in enumerate(names)
                        for j, b in enumerate(names) if i < j})
            if text:
                row["retained"] = d.retained(layer)
                if d.factorwise:
                    row["cos(F, E)"] = d.factorwise_cosine(layer)
                    row["cross"] = d.cross_ratio(layer)
            rows[layer] = row
        print("per layer:")
        print("\n".join(_table(rows, "layer")))
    return 0


# ----------------------------------------------------------------------------- bake


def _add_bake(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bake",
        help="merge a module or composition into a base model's weights (shard by shard)",
        description=BAKE_DESCRIPTION,
        epilog=BAKE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", required=True, metavar="DIR",
                   help="the base model's checkpoint directory (safetensors)")
    _composition_args(p, "output checkpoint directory (must not exist unless --force)")
    p.set_defaults(func=cmd_bake)


def cmd_bake(args: argparse.Namespace) -> int:
    from pemarith.bake import bake

    pem, modules, terms = _composition(args)
    report = bake(pem, args.base, args.out, mode=args.mode, rank=args.rank, keep=args.keep,
                  force=args.force, protect=tuple(modules.values()))
    _note_unused(modules, terms)
    summary = {"expression": str(pem), "mode": args.mode, "base": str(args.base),
               "path": str(report.path), "shards": report.shards, "merged": report.merged,
               "replaced": report.replaced, "added": report.added, "skipped": report.skipped,
               "seconds": report.seconds}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    changed = sum(len(v) for v in report.merged.values())
    print(f"baked     {summary['expression']} ({args.mode}) into {args.base}")
    print(f"output    {report.path} ({len(report.shards)} shard(s))")
    print(f"merged    {len(report.merged)} layers ({changed} tensors)"
          + (f"; replaced {', '.join(report.replaced)}" if report.replaced else "")
          + (f"; added {', '.join(report.added)}" if report.added else ""))
    if report.skipped:
        print(f"not copied (other weight formats, unmerged): {', '.join(report.skipped)}")
    print(f"time      {report.seconds:.3g} s")
    return 0


# ----------------------------------------------------------------------------- hf


def _add_hf(subparsers: Any) -> None:
    """Register the hf subcommands, or stubs that say how to install them."""
    try:
        from pemarith.hf import commands
    except ImportError as exc:
        if exc.name in ("pemarith.hf", "pemarith.hf.commands"):
            return  # this build has no hf layer
        missing = exc.name or str(exc)
        for name in HF_COMMANDS:
            p = subparsers.add_parser(name, help=f"(needs pemarith[hf]: {missing} is missing)",
                                      add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_hf_missing(name, missing), takes_any_args=True)
        return
    commands.register(subparsers)


def _hf_missing(name: str, missing: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise PemarithError(
            f"`pemarith {name}` needs the hf extra ({missing} is missing): "
            "pip install 'pemarith[hf]'"
        )

    return run


# ----------------------------------------------------------------------------- main


def _first_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``pemarith`` parser. When ``argv`` names a core command, hf is not imported."""
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_Parser)
    _add_compose(subparsers)
    _add_inspect(subparsers)
    _add_diagnose(subparsers)
    _add_bake(subparsers)
    if argv is None or _first_command(argv) not in CORE_COMMANDS:
        _add_hf(subparsers)
    return parser


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is, so that it unwinds like Ctrl-C."""


def unwind_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a scheduler's stop) unwind the stack instead of ending the process
    where it stands, so that every ``finally`` runs and half-written outputs (the temporary
    directories of :func:`pemarith.io.output_dir`) are removed. SIGKILL still cannot be caught."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the default
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    unwind_on_sigterm()
    if _first_command(argv) in CORE_COMMANDS:
        _single_threaded_blas()
    parser = build_parser(argv)
    # parse_known_args so that the hf stubs can answer whatever options they are given
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_any_args", False):
        hint = MINUS_HINT if args.command == "compose" and extra[0].startswith("-") else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is met inside the try
    except BrokenPipeError:
        # `pemarith inspect X | head`: the reader has gone; exit quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except PemarithError as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except OSError as exc:
        # File-system trouble the library did not anticipate: still one line, no traceback.
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}")
    except Terminated:
        print(f"{PROG}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
