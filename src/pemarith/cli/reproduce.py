"""``pemarith reproduce``: reproduce a setting of the paper."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import PemarithError

EPILOG = """\
reproductions (recipes in experiments/, or give a .toml path):
  distribution-generalisation   4.2, Table 2: MiniLM, two label-skewed subsets per GLUE task
  multitask                     4.3, Table 3 / Figure 2: SmolLM2 prompted MNLI + RTE
  init-analysis                 4.7, Table 7: 4.2's LoRA merges, same vs different init
  unlearning                    4.4, Tables 4/11: negating a toxic SmolLM2 module
  domain-transfer               4.5, Table 5: cls_source + (lm_target - lm_source)
  domain-transfer-gemma3        4.5 again on Gemma 3 270M, a second model size (LoRA)
  detox-instruct                4.6, Tables 6/12: (1+l)*t1 - l*t_toxic

examples:
  pemarith reproduce distribution-generalisation --quick
  nice -n 10 pemarith reproduce distribution-generalisation --threads 1 --tasks sst2,rte --seeds 0
  pemarith reproduce distribution-generalisation --report --docs docs/results

Finished modules, sweeps and evaluations are kept in a store (default: store/ beside the output
directory), so a rerun (or another recipe needing the same modules) skips them. results.json,
report.md and the plots are rewritten after every finished cell."""


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers, got {text!r}") from None


def _tasks(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give task names, e.g. sst2,rte")
    return items


def register(subparsers: Any) -> None:
    """Add ``reproduce`` to the ``pemarith`` parser."""
    p = subparsers.add_parser(
        "reproduce",
        help="reproduce a setting of the paper (train, compose, tune lambda, report)",
        description="Train every module a setting needs, compose them, tune lambda on validation "
        "with the sweep machinery, evaluate on the held-out test half, and write results.json, "
        "report.md and plots. A rerun resumes: finished work is skipped.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="a reproduction (see below) or a recipe .toml")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes from the recipe's [quick] table (minutes; checks the pipeline)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="output directory (default runs/reproduce/NAME, NAME-quick with --quick)"
    )
    p.add_argument("--store", metavar="DIR", help="store of finished work (default: OUT/../store)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory (default: $PEMARITH_DATA_DIR, ../shared/data or ./data)",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        nargs="+",
        metavar="S",
        help="override the recipe's seeds (e.g. --seeds 0 1 or --seeds 0,1)",
    )
    p.add_argument("--tasks", type=_tasks, metavar="A,B", help="override the recipe's tasks")
    p.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (on a busy 2-core machine 1 is fastest)"
    )
    p.add_argument(
        "--report", action="store_true", help="do not run: rebuild report.md and plots from OUT/results.json"
    )
    p.add_argument(
        "--docs",
        metavar="DIR",
        help="also publish the results to DIR (e.g. docs/results): data file, "
        "figures and the page's generated tables",
    )
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party warnings (PEFT's, transformers', torch's), hidden by default",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..scenarios import default_out, load_recipe, reproduce
    from ..scenarios.docs import publish_docs
    from ..scenarios.runner import publish
    from ..scenarios.store import read_json

    if args.threads is not None and args.threads < 1:
        raise PemarithError(f"--threads must be at least 1, got {args.threads}")
    if args.seeds is not None:
        args.seeds = [s for group in args.seeds for s in group]
    recipe = load_recipe(args.name, quick=args.quick, seeds=args.seeds, tasks=args.tasks)
    out = Path(args.out) if args.out else default_out(recipe)
    if args.report:
        path = out / "results.json"
        if not path.is_file():
            raise PemarithError(
                f"{path} does not exist; run `pemarith reproduce {args.name}"
                f"{' --quick' if args.quick else ''}` first"
            )
        results = read_json(path)
        written = publish(results, out)
    else:
        results = reproduce(
            args.name,
            quick=args.quick,
            out=out,
            store=args.store,
            data_dir=args.data_dir,
            seeds=args.seeds,
            tasks=args.tasks,
            threads=args.threads,
            progress=args.progress,
        )
        written = [out / "results.json", out / "report.md"]
    if args.docs:
        written += publish_docs(results, args.docs, recipe.name)
    cells = len(results.get("cells", []))
    print(f"{recipe.name}{' (quick)' if recipe.quick else ''}: {cells} cells")
    for f in written:
        print(f"wrote {f}")
    return 0
