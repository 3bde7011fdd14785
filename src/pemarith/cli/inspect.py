"""``pemarith inspect``: describe one adapter directory."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .show import fmt, table

INSPECT_DESCRIPTION = """\
Describe one PEFT adapter directory: kind, base model, target modules, rank, alpha,
parameter count and the norm of each layer's weights."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="describe one adapter directory",
        description=INSPECT_DESCRIPTION,
        epilog="examples:\n  pemarith inspect runs/sst2_a\n  pemarith inspect runs/sst2_a --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="a PEFT adapter directory")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pemarith.io import inspect_adapter

    info = inspect_adapter(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    tables = {k: v for k, v in info.items() if isinstance(v, dict) and v}
    fields = {k: v for k, v in info.items() if k not in tables}
    width = max((len(k) for k in fields), default=0)
    for key, value in fields.items():
        print(f"{key.replace('_', ' ').ljust(width)}  {fmt(value)}")
    for key, rows in tables.items():
        if all(isinstance(v, (int, float, dict)) for v in rows.values()):
            print(f"{key.replace('_', ' ')}:")
            print("\n".join(table(rows, "layer" if "layer" in key else "tensor")))
        else:
            print(f"{key.replace('_', ' ')}: {json.dumps(rows, default=str)}")
    return 0
