"""``pemarith train``: train one module (LoRA, (IA)3) or fully fine-tune a model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import (
    Deprecated,
    add_data_args,
    add_hardware,
    add_revision,
    add_verbose,
    csv,
    model_name,
    positive_int,
    require_hf,
)

TRAIN_EPILOG = """\
examples:
  pemarith train --model minilm --task sst2 --subset skew0 --init-seed 0 --steps 300 -o runs/s0
  pemarith train --model minilm --task stsb --peft ia3 --lr 8e-3 --epochs 1 -o runs/stsb_ia3
  pemarith train --model smollm2 --task civil_comments --epochs 1 --max-length 64 -o runs/toxic
  pemarith train --model minilm --task cola --peft full --lr 2e-5 --steps 2000 -o runs/cola_fft

The same --init-seed gives every module the same LoRA A and head at initialisation (the
paper composes modules trained from a shared init); --seed drives data order and dropout."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a LoRA / (IA)3 module or fully fine-tune a model on a task",
        description="Train one module on a task and write a PEFT adapter directory (or a full "
        "model directory for --peft full) with training.json beside it.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="minilm, smollm2, a model directory or hub id")
    p.add_argument(
        "--task",
        required=True,
        help="a task name (see `pemarith tasks`) or a task file (.yaml, lm-eval's vocabulary: docs/tasks.md)",
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--peft",
        choices=("lora", "ia3", "full"),
        default="lora",
        help="module kind (default lora); full = full fine-tuning",
    )
    g = p.add_argument_group("module")
    g.add_argument("--r", type=positive_int, default=8, help="LoRA rank (default 8)")
    g.add_argument("--alpha", type=float, default=16.0, help="lora_alpha (default 16)")
    g.add_argument(
        "--targets",
        type=csv,
        metavar="A,B",
        help="target modules (default per architecture: BERT query,value; "
        "Llama q_proj,v_proj; (IA)3 also the feed-forward down projection)",
    )
    g.add_argument(
        "--feedforward", type=csv, metavar="A,B", help="(IA)3: which targets are feed-forward modules"
    )
    g.add_argument(
        "--modules-to-save",
        type=csv,
        metavar="A,B",
        help="modules trained and saved whole (default: the head; BERT: classifier,pooler)",
    )
    g.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout (default 0.1)")
    g.add_argument(
        "--model-dropout", type=float, help="set every dropout layer of the base model to this probability"
    )
    g.add_argument(
        "--init-seed",
        type=int,
        default=0,
        help="seed of the module's initialisation (default 0; share it to compose)",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument("--seed", type=int, default=0, help="seed of data order and dropout")
    length = o.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimiser steps")
    length.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    o.add_argument("--lr", type=float, default=5e-4, help="learning rate (default 5e-4)")
    o.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    o.add_argument("--max-length", type=positive_int, default=128, help="tokens per example (default 128)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    o.add_argument("--warmup-ratio", type=float, default=0.0, help="share of warmup steps")
    o.add_argument(
        "--schedule",
        choices=("linear", "constant"),
        default="linear",
        help="learning-rate schedule after warmup (default linear decay to 0)",
    )
    o.add_argument(
        "--objective",
        choices=("auto", "classify", "lm"),
        default="auto",
        help="causal LMs: answer words (classification) or plain LM on the text",
    )
    d = p.add_argument_group("data")
    d.add_argument("--split", default="train", help="split to train on (default train)")
    add_data_args(d)
    d.add_argument(
        "--subset",
        choices=("skew0", "skew1"),
        help="train on one label-skewed subset of the split (Appendix B)",
    )
    d.add_argument("--subset-seed", type=int, default=0, help="seed of the skewed split")
    d.add_argument(
        "--subset-size",
        type=positive_int,
        default=1000,
        help="rows per skewed subset (default 1000, as the paper)",
    )
    p.add_argument(
        "--force",
        dest="overwrite",
        action="store_true",
        help="replace DIR if it is an earlier trained module (it holds training.json) or empty",
    )
    p.add_argument("--overwrite", dest="overwrite", action=Deprecated, nargs=0, const=True, new="--force")
    add_hardware(p)
    add_revision(p)
    add_verbose(p)
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=5.0,
        metavar="M",
        help="keep a resume point every M minutes (.DIR.resume.pt beside DIR): rerunning "
        "the same command after an interruption continues where it stopped and "
        "gives the same module; 0 turns it off (default 5)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_hf()
    from ..hf.train import TrainConfig, train

    cfg = TrainConfig(
        model=model_name(args),
        task=args.task,
        output_dir=args.out,
        peft_type=args.peft,
        r=args.r,
        alpha=args.alpha,
        targets=args.targets,
        feedforward=args.feedforward,
        modules_to_save=args.modules_to_save,
        dropout=args.dropout,
        model_dropout=args.model_dropout,
        init_seed=args.init_seed,
        seed=args.seed,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        schedule=args.schedule,
        objective=args.objective,
        split=args.split,
        split_seed=args.split_seed,
        data_dir=args.data_dir,
        subset=args.subset,
        subset_seed=args.subset_seed,
        subset_size=args.subset_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
        device=args.device,
        dtype=args.model_dtype,
        checkpoint_seconds=60.0 * args.checkpoint_minutes,
    )
    out = train(cfg)
    record = json.loads((out / "training.json").read_text())
    loss = record["loss"]
    tail = loss[-min(20, len(loss)) :]
    print(
        f"wrote {out}  ({record['steps']} steps on {record['data']['rows']} rows, "
        f"loss {loss[0]:.4f} -> {sum(tail) / len(tail):.4f}, {record['seconds']:.0f} s)"
    )
    return 0
