"""``pemarith search``: one coefficient per module, searched with Optuna on validation.

``register(subparsers)`` adds the subcommand (listed in ``pemarith.cli.COMMANDS``); ``run(args)`` runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..methods import MergeSpec
from .args import (
    add_hardware,
    add_merge_args,
    add_revision,
    add_verbose,
    merge_options,
    model_name,
    module_arg,
    module_map,
    rank_arg,
    require_hf,
)

DESCRIPTION = """\
Search the free variables of a composition (one coefficient per module, or any expression)
with Optuna on the validation split, evaluate the best trial on the test split, and write
trials.csv, results.json, search_history.png and search_vars.png to -o DIR.

Each --var NAME=LO:HI gives a variable its range; NAME=LO:HI:STEP keeps it on a grid (needed by
--sampler grid). The objective is the first task's first metric (or --objective METRIC, or
--objective loss: the validation loss, minimised), with LoraHub's penalty W * mean |v| when
--l1 W is given. As in `sweep`, the base model is loaded once and each trial's composition is
written into it in place; finished trials are kept in DIR/records.jsonl, so rerunning an
interrupted search (same arguments) resumes it and evaluates nothing twice."""

EPILOG = """\
examples:
  pemarith search "a*x + b*y + c*z" -m x=runs/sst2 -m y=runs/mnli -m z=runs/rte --model minilm \\
      --task qnli --var a=0:1.5 --var b=0:1.5 --var c=0:1.5 --budget 40 --l1 0.05 -o search/hub
  pemarith search "a*mnli + b*rte" -m mnli=M -m rte=R --model minilm --task rte \\
      --var a=0:1:0.1 --var b=0:1:0.1 --sampler grid --budget 121 -o search/grid
  pemarith search "a*x + b*y" -m x=X -m y=Y --model minilm --task sst2 --var a=0:1 --var b=0:1 \
      --ray --workers 2 -o search/ray      # a local Ray; --ray auto joins a running cluster
  pemarith search "a*cls + b*(lm_t - lm_s)" -m cls=C -m lm_t=T -m lm_s=S --model smollm2 \\
      --task sst2 --var a=0:1.5 --var b=0:1.5 --sampler cmaes --objective loss --limit 64 -o out"""


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _var(text: str) -> Any:
    from pemarith.errors import PemarithError

    from ..hf.search_config import parse_var

    try:
        return parse_var(text)
    except PemarithError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _l1(text: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (w >= 0 and w != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return w


def register(subparsers: Any) -> None:
    """Add the ``search`` subcommand to ``subparsers``; returns its parser."""

    from ..hf.search_config import SAMPLERS

    p = subparsers.add_parser(
        "search",
        help="search one coefficient per module with Optuna",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "expr",
        nargs="+",
        metavar="EXPR",
        help="the expression, e.g. \"a*x + b*y\"; after '--' it may start with '-'",
    )
    p.add_argument(
        "-m",
        "--module",
        dest="modules",
        metavar="NAME=PATH",
        action="append",
        type=module_arg,
        default=[],
        help="an adapter directory (repeat per module)",
    )
    p.add_argument("--model", required=True, help="base model: minilm, smollm2, a directory or hub id")
    p.add_argument(
        "--task",
        dest="tasks",
        action="append",
        required=True,
        metavar="TASK",
        help="task name or task file (.yaml, docs/tasks.md) to evaluate (repeat to track several; see `pemarith tasks`)",
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="DIR",
        help="output directory: trials, results, plots, and the records a rerun resumes from",
    )
    p.add_argument(
        "--var",
        dest="variables",
        action="append",
        type=_var,
        default=[],
        metavar="NAME=LO:HI[:STEP]",
        required=True,
        help="a searched variable and its range (repeat for each free name)",
    )
    p.add_argument("--budget", type=_positive, default=40, metavar="N", help="trials (default 40)")
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="Optuna sampler (default tpe; cmaes for several continuous variables; grid needs LO:HI:STEP)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="the sampler's seed (default 0)")
    p.add_argument(
        "--objective",
        metavar="METRIC|loss",
        help="metric to optimise (default: the first task's first metric; loss, perplexity "
        "and toxicity are minimised, others maximised), or loss: the validation loss",
    )
    p.add_argument(
        "--l1",
        type=_l1,
        default=0.0,
        metavar="W",
        help="add LoraHub's penalty W * mean |v| over the variables (default 0)",
    )
    p.add_argument(
        "--mode",
        choices=("factorwise", "exact"),
        default="factorwise",
        help="LoRA arithmetic on the factors (paper, default) or on Delta W",
    )
    p.add_argument("--rank", type=rank_arg, metavar="R", help="with --mode exact: truncated SVD to rank R")
    add_merge_args(p, seed_flag="--merge-seed")  # --seed is the sampler's
    p.add_argument(
        "--keep",
        metavar="NAME",
        help="module whose modules_to_save (head) to keep when coefficients do not sum to 1",
    )
    p.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="first N rows of each split (text tasks: N tokens for perplexity)",
    )
    p.add_argument("--samples", type=_positive, metavar="N", help="generations scored for toxicity")
    p.add_argument(
        "--max-tokens",
        type=_positive,
        metavar="N",
        help="text tasks: tokens scored for perplexity (default: --limit, else all)",
    )
    p.add_argument("--batch-size", type=_positive, default=32, metavar="N")
    p.add_argument(
        "--split-seed", type=int, default=0, metavar="S", help="seed of the split permutation (default 0)"
    )
    p.add_argument("--data-dir", metavar="DIR", help="data directory (default: PEMARITH_DATA_DIR, ...)")
    p.add_argument("--val-split", default="validation", help="split to search on (default: validation)")
    p.add_argument("--test-split", default="test", help="split to report the best on; 'none' to skip")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="evaluate on Ray actors, each loading the model once: start a local Ray "
        "(no ADDRESS) or join a cluster (e.g. auto); needs pemarith[ray]",
    )
    p.add_argument(
        "--workers", type=_positive, metavar="K", help="with --ray: K actors, K trials at a time (default 2)"
    )
    p.add_argument("--restart", action="store_true", help="discard DIR's records and start afresh")
    p.add_argument("--no-plot", action="store_true", help="do not draw the figures")
    p.add_argument("--json", action="store_true", help="print results.json")
    add_hardware(p)
    add_revision(p)
    add_verbose(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_hf()
    from pemarith.errors import PemarithError

    from ..hf.search import run_search
    from ..hf.search_config import SearchConfig

    config = SearchConfig(
        device=args.device,
        dtype=args.model_dtype,
        expr=" ".join(args.expr),
        modules=module_map(args.modules),
        model=model_name(args),
        tasks=tuple(args.tasks),
        out=args.out,
        variables=tuple(args.variables),
        budget=args.budget,
        sampler=args.sampler,
        seed=args.seed,
        objective=args.objective,
        l1=args.l1,
        mode=args.mode,
        rank=args.rank,
        merge=MergeSpec(**merge_options(args, seed_attr="merge_seed")),
        keep=args.keep,
        limit=args.limit,
        split_seed=args.split_seed,
        data_dir=args.data_dir,
        val_split=args.val_split,
        test_split=None if args.test_split == "none" else args.test_split,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        samples=args.samples,
        restart=args.restart,
        plot=not args.no_plot,
    )
    engine = None
    if args.ray is not None:
        from ..hf.search_ray import ray_engine

        engine = ray_engine(args.workers or 2, args.ray or None)
    elif args.workers is not None:
        raise PemarithError("--workers needs --ray (the local loop evaluates one trial at a time)")
    result = run_search(config, engine=engine)
    if args.json:
        print(Path(result.files["json"]).read_text(encoding="utf-8"), end="")
        return 0
    best = result.best
    shown = ", ".join(f"{n} = {best.params[n]:.6g}" for n in result.names)
    print(
        f"best      trial {best.number}: {shown}  (objective {best.objective:.6g}, {result.metric} "
        f"{result.direction[:3]})"
    )
    print("validation " + ", ".join(f"{c} {best.scores[c]:.4g}" for c in result.columns if c in best.scores))
    if result.test is not None:
        print(
            "test      " + ", ".join(f"{c} {result.test[c]:.4g}" for c in result.columns if c in result.test)
        )
    print(
        f"trials    {len(result.trials)} ({config.sampler}, seed {config.seed}, {result.engine}); "
        f"{result.evaluations} evaluated, {result.reused} read back from {config.out}/records.jsonl; "
        f"{result.seconds:.1f} s"
    )
    print("wrote     " + ", ".join(result.files.values()))
    return 0
