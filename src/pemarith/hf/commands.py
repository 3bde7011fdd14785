"""The model-side subcommands of ``pemarith``: ``tasks``, ``train``, ``eval``, ``demo``.

``register(subparsers)`` is called by ``pemarith.cli``. Nothing here imports torch,
transformers or peft at import time: each handler imports what it needs, so ``pemarith
compose`` and ``pemarith --help`` stay fast. Each handler builds a config, makes one library
call and prints the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import PemarithError

TRAIN_EPILOG = """\
examples:
  pemarith train --model minilm --task sst2 --subset skew0 --init-seed 0 --steps 300 -o runs/s0
  pemarith train --model minilm --task stsb --peft ia3 --lr 8e-3 --epochs 1 -o runs/stsb_ia3
  pemarith train --model smollm2 --task civil_comments --epochs 1 --max-length 64 -o runs/toxic
  pemarith train --model minilm --task cola --peft full --lr 2e-5 --steps 2000 -o runs/cola_fft

The same --init-seed gives every module the same LoRA A and head at initialisation (the
paper composes modules trained from a shared init); --seed drives data order and dropout."""

EVAL_EPILOG = """\
examples:
  pemarith eval --model minilm --adapter runs/s0 --task sst2 --split validation
  pemarith eval --model minilm --expr "0.5*a + 0.5*b" -m a=runs/s0 -m b=runs/s1 --task sst2
  pemarith eval --model smollm2 --task wikitext --split test --limit 4096
  pemarith eval --model smollm2 --adapter runs/detox --task civil_comments --split test \\
      --metric toxicity --samples 200 --json runs/detox/toxicity.json

--limit keeps the first N rows, or for perplexity the first N tokens of the text."""


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError("give at least one name, e.g. query,value")
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR",
                   help="data directory (default: $PEMARITH_DATA_DIR, ../shared/data or ./data)")
    p.add_argument("--split-seed", type=int, default=0, metavar="S",
                   help="seed of the permutation that cuts splits from a file (default 0)")


def register(subparsers: Any) -> None:
    """Add ``tasks``, ``train``, ``eval``, ``sweep``, ``reproduce`` and ``demo`` to the ``pemarith`` parser."""
    from .reproduce_cli import register_reproduce
    from .search_cli import register_search
    from .sweep_cli import register_sweep

    _add_tasks(subparsers)
    _add_train(subparsers)
    _add_eval(subparsers)
    register_sweep(subparsers)
    register_search(subparsers)
    register_reproduce(subparsers)
    _add_demo(subparsers)


# -- tasks --------------------------------------------------------------------------------------

def _add_tasks(subparsers: Any) -> None:
    p = subparsers.add_parser("tasks", help="list the tasks with their splits and metrics",
                              description="List the tasks train and eval know.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_tasks)


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import describe_tasks

    rows = describe_tasks()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("name", "kind", "labels", "metric", "splits")
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    print("  ".join(c.ljust(width.get(c, 0)) for c in cols).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(width.get(c, 0)) for c in cols).rstrip())
    return 0


# -- train --------------------------------------------------------------------------------------

def _add_train(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a LoRA / (IA)3 module or fully fine-tune a model on a task",
        description="Train one module on a task and write a PEFT adapter directory (or a full "
        "model directory for --peft full) with training.json beside it.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="minilm, smollm2, a model directory or hub id")
    p.add_argument("--task", required=True, help="a task name (see `pemarith tasks`)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--peft", choices=("lora", "ia3", "full"), default="lora",
                   help="module kind (default lora); full = full fine-tuning")
    g = p.add_argument_group("module")
    g.add_argument("--r", type=_positive_int, default=8, help="LoRA rank (default 8)")
    g.add_argument("--alpha", type=float, default=16.0, help="lora_alpha (default 16)")
    g.add_argument("--targets", type=_csv, metavar="A,B",
                   help="target modules (default per architecture: BERT query,value; "
                   "Llama q_proj,v_proj; (IA)3 also the feed-forward down projection)")
    g.add_argument("--feedforward", type=_csv, metavar="A,B",
                   help="(IA)3: which targets are feed-forward modules")
    g.add_argument("--modules-to-save", type=_csv, metavar="A,B",
                   help="modules trained and saved whole (default: the head; BERT: "
                   "classifier,pooler)")
    g.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout (default 0.1)")
    g.add_argument("--model-dropout", type=float,
                   help="set every dropout layer of the base model to this probability")
    g.add_argument("--init-seed", type=int, default=0,
                   help="seed of the module's initialisation (default 0; share it to compose)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--seed", type=int, default=0, help="seed of data order and dropout")
    length = o.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, help="optimiser steps")
    length.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    o.add_argument("--lr", type=float, default=5e-4, help="learning rate (default 5e-4)")
    o.add_argument("--batch-size", type=_positive_int, default=16, help="default 16")
    o.add_argument("--max-length", type=_positive_int, default=128,
                   help="tokens per example (default 128)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    o.add_argument("--warmup-ratio", type=float, default=0.0, help="share of warmup steps")
    o.add_argument("--schedule", choices=("linear", "constant"), default="linear",
                   help="learning-rate schedule after warmup (default linear decay to 0)")
    o.add_argument("--objective", choices=("auto", "classify", "lm"), default="auto",
                   help="causal LMs: answer words (classification) or plain LM on the text")
    d = p.add_argument_group("data")
    d.add_argument("--split", default="train", help="split to train on (default train)")
    _add_data_args(d)
    d.add_argument("--subset", choices=("skew0", "skew1"),
                   help="train on one label-skewed subset of the split (Appendix B)")
    d.add_argument("--subset-seed", type=int, default=0, help="seed of the skewed split")
    d.add_argument("--subset-size", type=_positive_int, default=1000,
                   help="rows per skewed subset (default 1000, as the paper)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="M",
                   help="keep a resume point every M minutes (.DIR.resume.pt beside DIR): rerunning "
                        "the same command after an interruption continues where it stopped and "
                        "gives the same module; 0 turns it off (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        model=args.model, task=args.task, output_dir=args.out, peft_type=args.peft, r=args.r,
        alpha=args.alpha, targets=args.targets, feedforward=args.feedforward,
        modules_to_save=args.modules_to_save, dropout=args.dropout,
        model_dropout=args.model_dropout, init_seed=args.init_seed, seed=args.seed,
        steps=args.steps, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, schedule=args.schedule, objective=args.objective,
        split=args.split, split_seed=args.split_seed, data_dir=args.data_dir,
        subset=args.subset, subset_seed=args.subset_seed, subset_size=args.subset_size,
        overwrite=args.overwrite, progress=not args.quiet,
        checkpoint_seconds=60.0 * args.checkpoint_minutes)
    out = train(cfg)
    record = json.loads((out / "training.json").read_text())
    loss = record["loss"]
    tail = loss[-min(20, len(loss)):]
    print(f"wrote {out}  ({record['steps']} steps on {record['data']['rows']} rows, "
          f"loss {loss[0]:.4f} -> {sum(tail) / len(tail):.4f}, {record['seconds']:.0f} s)")
    return 0


# -- eval ---------------------------------------------------------------------------------------

def _add_eval(subparsers: Any) -> None:
    from .. import cli  # the argument types of `pemarith compose`

    p = subparsers.add_parser(
        "eval", help="evaluate a model, an adapter or a composition on a task split",
        description="Evaluate a base model, with an adapter (--adapter) or a composition of "
        "adapters (--expr with -m), on a task split, and print the metrics.",
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="base model: minilm, smollm2, a directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--adapter", metavar="DIR",
                     help="a PEFT adapter directory, or a fully fine-tuned model directory")
    src.add_argument("--expr", metavar="EXPR", help="a composition, e.g. '0.5*a + 0.5*b'")
    p.add_argument("-m", "--module", dest="modules", metavar="NAME=PATH", action="append",
                   type=cli._module_arg, default=[], help="a module of --expr (repeat)")
    p.add_argument("--set", dest="vars", metavar="NAME=VALUE", action="append",
                   type=cli._var_arg, default=[], help="bind a variable of --expr")
    p.add_argument("--mode", choices=("factorwise", "exact"), default="factorwise",
                   help="how --expr composes LoRA modules (see `pemarith compose --help`)")
    p.add_argument("--rank", type=cli._rank_arg, metavar="R", help="with --mode exact")
    p.add_argument("--keep", metavar="NAME",
                   help="module whose classifier head to keep when the coefficients do not sum "
                   "to 1")
    p.add_argument("--task", required=True, help="a task name (see `pemarith tasks`)")
    p.add_argument("--split", default="validation", choices=("train", "validation", "test"),
                   help="default validation")
    _add_data_args(p)
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="first N rows (or N tokens for perplexity)")
    p.add_argument("--metric", dest="metrics", action="append", metavar="NAME",
                   help="compute only these metrics (repeat); default: the task's")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="default 32")
    p.add_argument("--max-length", type=_positive_int,
                   help="tokens per example (default 128 encoder, 256 prompt; perplexity "
                   "window, default min(context, 1024))")
    p.add_argument("--stride", type=_positive_int, default=512, help="perplexity stride")
    p.add_argument("--samples", type=_positive_int, default=1000,
                   help="toxicity: generations to sample (default 1000, as the paper)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32,
                   help="toxicity: tokens per generation (default 32)")
    p.add_argument("--seed", type=int, default=0, help="toxicity: sampling seed")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write the result here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    pem = None
    if args.expr is not None:
        pem = _compose(args)
    elif args.modules or args.vars:
        raise PemarithError("-m and --set need --expr")
    options: dict[str, Any] = dict(stride=args.stride, samples=args.samples,
                                   max_new_tokens=args.max_new_tokens, seed=args.seed,
                                   progress=not args.quiet)
    if args.max_length is not None:
        options["max_length"] = args.max_length
    if args.metrics:
        options["metrics"] = args.metrics
    result = evaluate(args.model, args.task, args.split, adapter=args.adapter, pem=pem,
                      data_dir=args.data_dir, batch_size=args.batch_size, limit=args.limit,
                      split_seed=args.split_seed, json_out=args.json_out,
                      save_options={"keep": args.keep} if args.keep else None, **options)
    what = result["adapter"] or "(base model)"
    print(f"{result['task']} {result['split']}  {args.model} + {what}  n={result['n']}")
    for name, value in result["metrics"].items():
        if isinstance(value, float):
            print(f"  {name:12s} {value:.4f}")
        elif not isinstance(value, list):
            print(f"  {name:12s} {value}")
    if args.json_out:
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


def _compose(args: argparse.Namespace) -> Any:
    import pemarith

    from .. import cli

    modules = cli.module_map(args.modules)
    variables = dict(args.vars)
    if args.rank is not None and args.mode != "exact":
        raise PemarithError("--rank needs --mode exact (factorwise keeps the inputs' rank)")
    terms = cli._bind_modules(args.expr, modules, variables)
    used = {n: modules[n] for n in terms}
    return pemarith.compose(args.expr, used, mode=args.mode, rank=args.rank, variables=variables)


# -- demo ---------------------------------------------------------------------------------------

def _add_demo(subparsers: Any) -> None:
    from .demo import DEFAULTS

    p = subparsers.add_parser(
        "demo", help="end-to-end demo: two skewed SST-2 LoRA modules of MiniLM and their average",
        description="Train two LoRA modules of MiniLM from one init on the two label-skewed "
        "halves of SST-2 (Appendix B), compose 0.5*s0 + 0.5*s1, and compare validation "
        "accuracy. A rerun skips finished modules.")
    p.add_argument("--out", default=DEFAULTS["out"], metavar="DIR",
                   help=f"where to write (default {DEFAULTS['out']})")
    _add_data_args(p)
    p.add_argument("--model", default=DEFAULTS["model"], help="encoder (default minilm)")
    p.add_argument("--steps", type=_positive_int, default=DEFAULTS["steps"],
                   help=f"training steps per module (default {DEFAULTS['steps']})")
    p.add_argument("--subset-size", type=_positive_int, default=DEFAULTS["subset_size"],
                   help=f"rows per skewed subset (default {DEFAULTS['subset_size']})")
    p.add_argument("--limit", type=_positive_int, help="evaluate on the first N rows only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=Path(args.out), data_dir=args.data_dir, model=args.model, steps=args.steps,
             subset_size=args.subset_size, split_seed=args.split_seed, limit=args.limit,
             progress=not args.quiet)
    return 0
