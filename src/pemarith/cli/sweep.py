"""``pemarith sweep``: tune a composition's free variable on validation, report on test."""

from __future__ import annotations

import argparse
from typing import Any

from .args import (
    Deprecated,
    add_hardware,
    add_merge_args,
    add_revision,
    add_verbose,
    merge_options,
    model_name,
    module_arg,
    module_map,
    note,
    positive_int,
    rank_arg,
    require_hf,
)

DESCRIPTION = """\
Evaluate a composition for each value of its free variable on the validation split, pick
one by a rule, evaluate the pick on the test split, and write results.csv, results.json
and sweep.png (metric against lambda, modules alone and the base model as reference lines)
to -o DIR.

The base model is loaded once; each value's composed weights are written into the live
PEFT model in place (no adapter is saved, no model reloaded). Finished evaluations are kept
in DIR/records.jsonl, so rerunning an interrupted sweep resumes where it stopped.

selection rules (--select):
  max | min                      the best value of the primary (first) metric
  max accuracy | min ppl         the best value of a named metric
  "max l where ppl <= base + 0.5"
                                 the largest l whose perplexity stays within 0.5 of the base
                                 model's (the paper's unlearning rule, Appendix C); `base` is
                                 the base model's score (no adapter) of the condition's metric
  several conditions join with `and`; metric names may be shortened (ppl, acc, tox) and are
  `task.metric` when several --task are given."""


EPILOG = """\
examples:
  pemarith sweep "l*a + (1-l)*b" -m a=runs/a -m b=runs/b --model minilm --task sst2 -o sweeps/ab
  pemarith sweep "l*a + (1-l)*b" -m a=A -m b=B --model minilm --task sst2 --search refine -o out
  pemarith sweep "l*mnli + (1-l)*rte" -m mnli=M -m rte=R --model smollm2 --task mnli --task rte \\
      --select "max rte.accuracy where mnli.accuracy >= 0.5" -o out
  pemarith sweep -- "-l*toxic" -m toxic=runs/toxic --model smollm2 --task civil_comments \\
      --metric toxicity --metric perplexity --select "max l where ppl <= base + 0.5" -o out"""


def register(subparsers: Any) -> None:
    """Add the ``sweep`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "sweep",
        help="tune lambda: evaluate a composition over a grid",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "expr",
        nargs="+",
        metavar="EXPR",
        help="the expression, e.g. \"l*a + (1-l)*b\"; after '--' it may start with '-'",
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
        help="output directory: results, plot, and the records a rerun resumes from",
    )
    p.add_argument("--var", default="l", help="the swept variable (default: l)")
    p.add_argument(
        "--grid",
        default="0:1:0.02",
        help="START:STOP:STEP (stop included) or a comma list (default: 0:1:0.02)",
    )
    p.add_argument(
        "--search",
        choices=("grid", "refine"),
        default="grid",
        help="every grid value, or coarse then refine around the best (default: grid)",
    )
    p.add_argument(
        "--coarse",
        type=positive_int,
        default=5,
        metavar="K",
        help="refine: evaluate every K-th grid value first (default: 5)",
    )
    p.add_argument("--select", default="max", metavar="RULE", help="selection rule (see above; default: max)")
    p.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        default=[],
        metavar="NAME",
        help="metric to track and plot (repeat; default: each task's first metric)",
    )
    p.add_argument(
        "--mode",
        choices=("factorwise", "exact"),
        default="factorwise",
        help="LoRA arithmetic on the factors (paper, default) or on Delta W",
    )
    p.add_argument("--rank", type=rank_arg, metavar="R", help="with --mode exact: truncated SVD to rank R")
    p.add_argument(
        "--keep",
        metavar="NAME",
        help="module whose modules_to_save (head) to keep when coefficients do not sum to 1",
    )
    add_merge_args(p, seed_flag="--merge-seed")
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="first N rows of each split (text tasks: N tokens for perplexity)",
    )
    p.add_argument("--samples", type=positive_int, metavar="N", help="generations scored for toxicity")
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        metavar="N",
        help="text tasks: tokens scored for perplexity (default: --limit, else all)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N")
    p.add_argument("--seed", dest="seed", type=int, action=Deprecated, new="--split-seed")
    p.add_argument(
        "--split-seed",
        dest="seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the split permutation (and of toxicity sampling; default 0)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="data directory (default: PEMARITH_DATA_DIR, ...)")
    p.add_argument("--val-split", default="validation", help="split to select on (default: validation)")
    p.add_argument("--test-split", default="test", help="split to report the pick on; 'none' to skip")
    p.add_argument("--no-refs", action="store_true", help="do not evaluate the modules alone")
    p.add_argument(
        "--base",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="evaluate the base model (default: when the rule uses `base` or every task is a text task)",
    )
    p.add_argument("--restart", action="store_true", help="discard DIR's records and start afresh")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="evaluate on Ray actors, each loading the model once: start a local Ray (no "
        "ADDRESS) or join a cluster (e.g. auto, ray://head:10001); needs pemarith[ray] "
        "(see docs/sweep.md)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="K",
        help="evaluate on K Ray actors, K values at a time (default 1: in this process); "
        "without --ray, on a local Ray",
    )
    p.add_argument("--distributed", dest="ray", action=Deprecated, nargs=0, const="auto", new="--ray auto")
    # the file-claim workers' option: accepted for one release, ignored (Ray retries instead)
    p.add_argument("--claim-timeout", type=float, help=argparse.SUPPRESS)
    p.add_argument("--no-plot", action="store_true", help="do not draw sweep.png")
    p.add_argument("--json", action="store_true", help="print results.json's summary")
    add_hardware(p)
    add_revision(p)
    add_verbose(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_hf()
    from ..hf.sweep import SweepConfig, run_sweep
    from ..methods import MergeSpec

    if args.claim_timeout is not None:
        note(
            "--claim-timeout is ignored: Ray retries a dead worker's evaluation; it goes in the next release"
        )

    modules = module_map(args.modules)
    config = SweepConfig(
        device=args.device,
        dtype=args.model_dtype,
        expr=" ".join(args.expr),
        modules=modules,
        model=model_name(args),
        tasks=tuple(args.tasks),
        out=args.out,
        var=args.var,
        grid=args.grid,
        search=args.search,
        select=args.select,
        metrics=tuple(args.metrics),
        mode=args.mode,
        rank=args.rank,
        keep=args.keep,
        limit=args.limit,
        coarse=args.coarse,
        seed=args.seed,
        data_dir=args.data_dir,
        val_split=args.val_split,
        test_split=None if args.test_split == "none" else args.test_split,
        refs=not args.no_refs,
        base=args.base,
        restart=args.restart,
        batch_size=args.batch_size,
        samples=args.samples,
        max_tokens=args.max_tokens,
        plot=not args.no_plot,
        workers=args.workers,
        ray=args.ray,
        merge=MergeSpec(**merge_options(args, seed_attr="merge_seed")),
    )
    result = run_sweep(config)
    if args.json:
        print(open(result.files["json"], encoding="utf-8").read(), end="")
        return 0
    val = next(s for v, s in result.validation if v == result.pick)
    shown = ", ".join(f"{c} {val[c]:.4g}" for c in result.columns if c in val)
    print(f"selected  {result.var} = {result.pick:g}  ({config.select!r}; validation: {shown})")
    if result.test is not None:
        print(
            "test      " + ", ".join(f"{c} {result.test[c]:.4g}" for c in result.columns if c in result.test)
        )
    for split, scores in result.base.items():
        print(
            f"base      {split}: " + ", ".join(f"{c} {scores[c]:.4g}" for c in result.columns if c in scores)
        )
    for name, scores in result.modules.items():
        print(f"{name:<9} alone: " + ", ".join(f"{c} {scores[c]:.4g}" for c in result.columns if c in scores))
    print(
        f"evaluated {result.evaluations} of {result.grid_size} grid values ({config.search}); "
        f"{result.reused} read back from {config.out}/records.jsonl; {result.seconds:.1f} s"
    )
    print("wrote     " + ", ".join(result.files.values()))
    return 0
