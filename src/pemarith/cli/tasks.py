"""``pemarith tasks``: list the tasks train, eval and sweep know."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tasks",
        help="list the tasks with their splits and metrics",
        description="List the tasks train, eval, sweep and search know: the built-ins, "
        "and with --include DIR the task files in DIR.",
    )
    p.add_argument(
        "--include",
        metavar="DIR",
        help="also list the task files (.yaml, lm-eval's vocabulary) in DIR; pass one to --task by its path",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hf.tasks import describe_tasks

    rows = describe_tasks(args.include)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("name", "kind", "labels", "metric", "splits")
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    print("  ".join(c.ljust(width.get(c, 0)) for c in cols).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(width.get(c, 0)) for c in cols).rstrip())
    return 0
