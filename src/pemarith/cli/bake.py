"""``pemarith bake``: merge a module or composition into a base checkpoint."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import composition, composition_args, note_unused

BAKE_DESCRIPTION = """\
Merge a module, or a composition of modules, into a base model's weights and write the result
as a plain checkpoint directory (no PEFT needed to load it).

BASE is a Hugging Face checkpoint directory with model.safetensors, or safetensors shards and
model.safetensors.index.json. It is read and written one shard, and one tensor, at a time;
torch is not needed. Adapted layers get W + s B A (LoRA) or PEFT's (IA)3 rescaling; the
modules_to_save tensors (e.g. a classifier head) replace the base's, or are added; every other
tensor is copied byte for byte and the other files (config, tokenizer) are copied as they are.
Other weight files (*.bin, *.gguf, ...) and onnx/ or openvino/ exports are left out: they
would hold unmerged weights. Other folders (e.g. a sentence-transformers Dense layer) are kept.
The expression and its options (--mode, --rank, --set, --keep) are those of `compose`."""


BAKE_EPILOG = """\
examples:
  pemarith bake --base models/minilm -m a=runs/sst2_a -o minilm_sst2 a
  pemarith bake --base models/smollm2 -m t=runs/t1 -m x=runs/toxic -o smollm2_detox \\
      --set l=0.4 "(1+l)*t - l*x"
  pemarith bake --base models/minilm -m a=A -m b=B -o out --mode exact "0.5*a + 0.5*b" """


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bake",
        help="merge a module or composition into a base model's weights (shard by shard)",
        description=BAKE_DESCRIPTION,
        epilog=BAKE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--base", required=True, metavar="DIR", help="the base model's checkpoint directory (safetensors)"
    )
    composition_args(p, "output checkpoint directory (must not exist unless --force)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pemarith.bake import bake

    pem, modules, terms = composition(args)
    report = bake(
        pem,
        args.base,
        args.out,
        mode=args.mode,
        rank=args.rank,
        keep=args.keep,
        force=args.force,
        protect=tuple(modules.values()),
    )
    note_unused(modules, terms)
    summary = {
        "expression": str(pem),
        "mode": args.mode,
        "base": str(args.base),
        "path": str(report.path),
        "shards": report.shards,
        "merged": report.merged,
        "replaced": report.replaced,
        "added": report.added,
        "skipped": report.skipped,
        "config": report.config,
        "seconds": report.seconds,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    changed = sum(len(v) for v in report.merged.values())
    print(f"baked     {summary['expression']} ({args.mode}) into {args.base}")
    print(f"output    {report.path} ({len(report.shards)} shard(s))")
    print(
        f"merged    {len(report.merged)} layers ({changed} tensors)"
        + (f"; replaced {', '.join(report.replaced)}" if report.replaced else "")
        + (f"; added {', '.join(report.added)}" if report.added else "")
    )
    if report.config:
        print(f"config    config.json: {', '.join(report.config)} set for the merged classifier head")
    if report.skipped:
        print(f"not copied (other weight formats, unmerged): {', '.join(report.skipped)}")
    print(f"time      {report.seconds:.3g} s")
    return 0
