"""``pemarith eval``: evaluate a model, an adapter or a composition on a task split."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import PemarithError
from .args import (
    add_data_args,
    add_hardware,
    add_revision,
    add_verbose,
    composition,
    model_name,
    module_arg,
    note,
    positive_int,
    rank_arg,
    require_hf,
    var_arg,
)

EVAL_EPILOG = """\
examples:
  pemarith eval --model minilm --adapter runs/s0 --task sst2 --split validation
  pemarith eval --model minilm --expr "0.5*a + 0.5*b" -m a=runs/s0 -m b=runs/s1 --task sst2
  pemarith eval --model smollm2 --task wikitext --split test --limit 4096
  pemarith eval --model smollm2 --adapter runs/detox --task civil_comments --split test \\
      --metric toxicity --samples 200 -o runs/detox/toxicity.json

--limit keeps the first N rows, or for perplexity the first N tokens of the text."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model, an adapter or a composition on a task split",
        description="Evaluate a base model, with an adapter (--adapter) or a composition of "
        "adapters (--expr with -m), on a task split, and print the metrics.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="base model: minilm, smollm2, a directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--adapter", metavar="DIR", help="a PEFT adapter directory, or a fully fine-tuned model directory"
    )
    src.add_argument("--expr", metavar="EXPR", help="a composition, e.g. '0.5*a + 0.5*b'")
    p.add_argument(
        "-m",
        "--module",
        dest="modules",
        metavar="NAME=PATH",
        action="append",
        type=module_arg,
        default=[],
        help="a module of --expr (repeat)",
    )
    p.add_argument(
        "--set",
        dest="vars",
        metavar="NAME=VALUE",
        action="append",
        type=var_arg,
        default=[],
        help="bind a variable of --expr",
    )
    p.add_argument(
        "--mode",
        choices=("factorwise", "exact"),
        default="factorwise",
        help="how --expr composes LoRA modules (see `pemarith compose --help`)",
    )
    p.add_argument("--rank", type=rank_arg, metavar="R", help="with --mode exact")
    p.add_argument(
        "--keep",
        metavar="NAME",
        help="module whose classifier head to keep when the coefficients do not sum to 1",
    )
    p.add_argument(
        "--task",
        required=True,
        help="a task name (see `pemarith tasks`) or a task file (.yaml, lm-eval's vocabulary: docs/tasks.md)",
    )
    p.add_argument(
        "--split", default="validation", choices=("train", "validation", "test"), help="default validation"
    )
    add_data_args(p)
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="first N rows (or N tokens for perplexity)"
    )
    p.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        metavar="NAME",
        help="compute only these metrics (repeat); default: the task's",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    p.add_argument(
        "--max-length",
        type=positive_int,
        help="tokens per example (default 128 encoder, 256 prompt; perplexity "
        "window, default min(context, 1024))",
    )
    p.add_argument("--stride", type=positive_int, default=512, help="perplexity stride")
    p.add_argument(
        "--samples",
        type=positive_int,
        default=1000,
        help="toxicity: generations to sample (default 1000, as the paper)",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=32, help="toxicity: tokens per generation (default 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="toxicity: sampling seed")
    p.add_argument(
        "--json",
        nargs="?",
        const=True,
        default=False,
        metavar="",
        help="print the result as JSON (the old `--json FILE` still writes FILE: use -o)",
    )
    p.add_argument("-o", "--out", metavar="FILE", help="also write the result to FILE (JSON)")
    add_hardware(p)
    add_revision(p)
    add_verbose(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_hf()
    from ..hf.evaluate import evaluate

    json_out = args.out
    if isinstance(args.json, str):  # the old spelling, --json FILE
        note(
            "--json FILE is now -o FILE (--json alone prints JSON); the old spelling goes in the next release"
        )
        json_out, args.json = json_out or args.json, False

    pem = None
    if args.expr is not None:
        pem, _, _ = composition(args, args.expr)
    elif args.modules or args.vars:
        raise PemarithError("-m and --set need --expr")
    options: dict[str, Any] = dict(
        stride=args.stride,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        progress=not args.quiet,
    )
    if args.max_length is not None:
        options["max_length"] = args.max_length
    if args.metrics:
        options["metrics"] = args.metrics
    result = evaluate(
        model_name(args),
        args.task,
        args.split,
        adapter=args.adapter,
        pem=pem,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        limit=args.limit,
        split_seed=args.split_seed,
        json_out=json_out,
        device=args.device,
        dtype=args.model_dtype,
        save_options={"keep": args.keep} if args.keep else None,
        **options,
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    what = result["adapter"] or "(base model)"
    print(
        f"{result['task']} {result['split']}  {model_name(args)} + {what}  n={result['n']}  ({result['device']})"
    )
    for name, value in result["metrics"].items():
        if isinstance(value, float):
            print(f"  {name:12s} {value:.4f}")
        elif not isinstance(value, list):
            print(f"  {name:12s} {value}")
    if json_out:
        print(f"wrote {json_out}", file=sys.stderr)
    return 0
