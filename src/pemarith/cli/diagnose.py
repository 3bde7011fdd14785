"""``pemarith diagnose``: similarity and interference of modules, from the files alone."""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from ..errors import PemarithError
from .args import bind_modules, module_arg, module_map, var_arg
from .show import fmt, table

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
                     ones add products of unrelated factors.
With two or more modules, what TIES and DARE act on (the signed task vectors
tau_i = c_i s_i B_i A_i, formed one layer at a time):
  sign conflict      the share of entries two or more modules change in which some pull up and
                     some down (a linear merge lets them cancel; TIES elects one sign)
  survives           per module, the share of its entries TIES keeps at --density D (top D by
                     magnitude, agreeing with the elected sign), and of its squared norm
Each number is followed by a line that says what it means."""


DIAGNOSE_EPILOG = """\
examples:
  pemarith diagnose -m a=runs/a -m b=runs/b
  pemarith diagnose -m a=runs/a -m b=runs/b --set l=0.5 "l*a + (1-l)*b"
  pemarith diagnose -m a=runs/a -m b=runs/b "a + b" --layers
  pemarith diagnose -m a=runs/a -m b=runs/b --json"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="similarity and interference of modules (no base model)",
        description=DIAGNOSE_DESCRIPTION,
        epilog=DIAGNOSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-m",
        "--module",
        dest="modules",
        metavar="NAME=PATH",
        action="append",
        type=module_arg,
        default=[],
        help="an adapter directory and its name (repeat for each module)",
    )
    p.add_argument(
        "--set",
        dest="vars",
        metavar="NAME=VALUE",
        action="append",
        type=var_arg,
        default=[],
        help="bind a free variable of EXPR, e.g. --set l=0.3",
    )
    p.add_argument("--layers", action="store_true", help="also print a table with one row per layer")
    p.add_argument(
        "--density",
        type=float,
        default=0.2,
        metavar="D",
        help="the TIES density the survival shares are computed at (default 0.2)",
    )
    p.add_argument(
        "--no-signs",
        action="store_true",
        help="skip the sign-conflict report (it forms each layer's dense update)",
    )
    p.add_argument("--json", action="store_true", help="print everything, per layer too, as JSON")
    p.add_argument(
        "expr",
        nargs="*",
        metavar="EXPR",
        help="optional composition whose interference to measure (-m modules it does "
        "not use are still compared); after '--' it may start with '-'",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pemarith
    from pemarith.diagnostics import diagnose
    from pemarith.expr import format_terms

    modules = module_map(args.modules)
    if not modules:
        raise PemarithError("no modules: give each adapter directory with -m NAME=PATH")
    variables = dict(args.vars)
    text = " ".join(args.expr)
    if text:
        terms = bind_modules(text, modules, variables)
        pem = pemarith.compose(text, {n: modules[n] for n in terms}, mode="exact", variables=variables)
        shown = format_terms(dict(pem.terms))
        for name in (n for n in modules if n not in terms):  # compared, with coefficient 0
            pem = pem + 0 * pemarith.load(modules[name], name)
    elif variables:
        raise PemarithError("--set binds a variable of EXPR, but no expression was given")
    else:
        pem = sum(pemarith.load(path, name) for name, path in modules.items())
    d = diagnose(pem)
    signs = None
    if len(d.names) > 1 and not args.no_signs:
        from pemarith.signs import sign_report

        signs = sign_report(pem, args.density)
    if args.json:
        print(
            json.dumps(
                {
                    "expression": shown if text else None,
                    **d.to_json(),
                    "signs": signs.to_json() if signs else None,
                },
                indent=2,
            )
        )
        return 0
    names = list(d.names)
    from pemarith.signs import shorten

    short = shorten(list(d.gram))
    print(f"modules      {', '.join(names)} ({d.kind}, {len(d.gram)} layers)")
    print(
        "update norm  "
        + "  ".join(f"{n} {v:.4g}" for n, v in d.norms().items())
        + "   (||D_i||_F, all layers)"
    )
    if len(names) > 1:
        cos = d.cosine()
        print("cosine similarity of the updates, whole modules:")
        print(
            "\n".join(
                table(
                    {a: {b: float(cos[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}, ""
                )
            )
        )
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                per = d.pair_cosines(a, b)
                lo, hi = min(per, key=per.get), max(per, key=per.get)
                mid = statistics.median(per.values())
                print(
                    f"per layer, {a}~{b}: min {per[lo]:.3g} ({short[lo]}), median {mid:.3g}, "
                    f"max {per[hi]:.3g} ({short[hi]})"
                )
                print("  -> " + _cosine_words(float(cos[i, names.index(b)]), a, b))
    if text:
        print(f"composition  {shown}")
        r = d.retained()
        print(
            f"retained norm  {fmt(r)}   ||sum c_i D_i|| / sum |c_i| ||D_i|| (1: aligned; "
            "near 0: the terms cancel)"
        )
        if r is not None:
            print(
                f"  -> the merge keeps {r:.0%} of the norm its terms would have if they pointed the same way"
            )
        if d.factorwise:
            print(
                f"factorwise     cos(F, E) {fmt(d.factorwise_cosine())}, cross terms "
                f"{fmt(d.cross_ratio())} of the own terms (F: factorwise, E: exact update)"
            )
            fc, cr = d.factorwise_cosine(), d.cross_ratio()
            if fc is not None and cr is not None:
                print("  -> " + _factorwise_words(fc, cr))
        elif d.kind == "LORA":
            print("factorwise     -   (the ranks differ: only exact mode applies)")
    if signs is not None:
        conflict, keep, energy = signs.conflict(), signs.survives(), signs.survives_energy()
        print(f"sign conflict  {fmt(conflict)}   of the entries two or more modules change")
        if conflict is not None:
            print(
                f"  -> in {conflict:.0%} of the shared entries the modules pull in opposite directions: a linear "
                "merge lets them cancel there, TIES keeps one sign"
            )
        print(
            f"survives at density {signs.density:g} (TIES): "
            + "  ".join(
                f"{n} {fmt(keep[n])} of entries, {fmt(energy[n])} of norm^2"
                for n in names
                if keep[n] is not None
            )
        )
        for n in (n for n in names if keep[n] is not None and energy[n] is not None):
            print(
                f"  -> TIES keeps {keep[n]:.0%} of {n}'s entries, carrying {energy[n]:.0%} of its squared norm"
            )
    if args.layers:
        rows = {}
        for layer in d.gram:
            row: dict[str, Any] = {f"|{n}|": v for n, v in d.norms(layer).items()}
            c = d.cosine(layer)
            row.update(
                {
                    f"cos {a}~{b}": float(c[i, j])
                    for i, a in enumerate(names)
                    for j, b in enumerate(names)
                    if i < j
                }
            )
            if text:
                row["retained"] = d.retained(layer)
                if d.factorwise:
                    row["cos(F, E)"] = d.factorwise_cosine(layer)
                    row["cross"] = d.cross_ratio(layer)
            if signs is not None:
                row["conflict"] = signs.conflict(layer)
            rows[short[layer]] = row
        print("per layer:")
        print("\n".join(table(rows, "layer")))
    return 0


def _cosine_words(cos: float, a: str, b: str) -> str:
    if abs(cos) < 0.1:
        return f"{a} and {b} change nearly orthogonal directions: added, they barely interfere"
    if cos >= 0.5:
        return f"{a} and {b} change much the same directions: added, they reinforce each other"
    if cos <= -0.5:
        return f"{a} and {b} change opposite directions: added, they cancel"
    return f"{a} and {b} overlap {'partly' if cos > 0 else 'partly against each other'} ({cos:+.2f})"


def _factorwise_words(cos: float, cross: float) -> str:
    if cos > 0.99:
        head = f"factor-wise points where exact does (within {1 - cos:.1%} of cos 1)"
    else:
        head = f"factor-wise points elsewhere than exact (cos {cos:.2f})"
    return f"{head}; its cross terms B_i A_j add {cross:.0%} of the own terms' norm"
