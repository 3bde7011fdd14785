"""``pemarith demo``: two skewed SST-2 LoRA modules of MiniLM and their average."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import add_data_args, add_verbose, positive_int, require_hf


def register(subparsers: Any) -> None:
    from ..hf.demo import DEFAULTS

    p = subparsers.add_parser(
        "demo",
        help="end-to-end demo: two skewed SST-2 LoRA modules of MiniLM and their average",
        description="Train two LoRA modules of MiniLM from one init on the two label-skewed "
        "halves of SST-2 (Appendix B), compose 0.5*s0 + 0.5*s1, and compare validation "
        "accuracy. A rerun skips finished modules.",
    )
    p.add_argument(
        "--out", default=DEFAULTS["out"], metavar="DIR", help=f"where to write (default {DEFAULTS['out']})"
    )
    add_data_args(p)
    p.add_argument("--model", default=DEFAULTS["model"], help="encoder (default minilm)")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULTS["steps"],
        help=f"training steps per module (default {DEFAULTS['steps']})",
    )
    p.add_argument(
        "--subset-size",
        type=positive_int,
        default=DEFAULTS["subset_size"],
        help=f"rows per skewed subset (default {DEFAULTS['subset_size']})",
    )
    p.add_argument("--limit", type=positive_int, help="evaluate on the first N rows only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_hf()
    from ..hf.demo import run_demo

    run_demo(
        out=Path(args.out),
        data_dir=args.data_dir,
        model=args.model,
        steps=args.steps,
        subset_size=args.subset_size,
        split_seed=args.split_seed,
        limit=args.limit,
        progress=not args.quiet,
    )
    return 0
