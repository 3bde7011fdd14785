"""``pemarith compose``: compose adapters by an expression and write a PEFT adapter."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .args import DTYPES, PROG, Deprecated, composition, composition_args, note_unused

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


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compose",
        help="compose adapters by an arithmetic expression",
        description=COMPOSE_DESCRIPTION,
        epilog=COMPOSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    composition_args(p, "output adapter directory (must not exist unless --force)")
    p.add_argument(
        "--out-dtype",
        dest="dtype",
        choices=DTYPES,
        help="dtype of the written weights (default: that of the inputs)",
    )
    p.add_argument("--dtype", dest="dtype", choices=DTYPES, action=Deprecated, new="--out-dtype")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pemarith.expr import format_terms

    pem, modules, terms = composition(args)
    report = pem.save(
        args.out,
        mode=args.mode,
        rank=args.rank,
        force=args.force,
        keep=args.keep,
        dtype=args.dtype,
        protect=tuple(modules.values()),
    )
    note_unused(modules, terms)
    (c,) = terms.values() if len(terms) == 1 else (1.0,)
    kind = str(getattr(getattr(pem, "kind", None), "name", "")).lower()
    if args.mode == "factorwise" and kind == "lora" and abs(c) not in (0.0, 1.0):
        # SPEC: users must be told; the paper's method scales both factors.
        print(
            f"{PROG}: note: factorwise scales both A and B, so the weight update is scaled by "
            f"c*|c| = {c * abs(c):g}; use --mode exact to scale it by {c:g}",
            file=sys.stderr,
        )

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
    if summary["method"] != "linear" or "space" in summary:
        options = ", ".join(
            f"{k} {v}" for k, v in summary.items() if k in ("density", "majority_sign", "seed", "space")
        )
        print(f"method    {summary['method']} ({options})")
    print(f"output    {report.path}")
    if errors:
        print(
            f"SVD error relative Frobenius per layer: max {summary['max_layer_error']:.3g}, "
            f"mean {summary['mean_layer_error']:.3g} ({len(errors)} layers)"
        )
    if report.seconds is not None:
        print(f"time      {report.seconds:.3g} s")
    return 0
