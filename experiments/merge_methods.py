"""Beyond the paper: TIES and DARE beside linear arithmetic on two of its settings (issue 20).

    python experiments/merge_methods.py --part 4.2 --tasks sst2 --seeds 0 1 2
    python experiments/merge_methods.py --part 4.3 --limit 100
    python experiments/merge_methods.py --report          # docs/results/merge-methods.md

Each setting's modules are the reproduction's own (trained by its recipe, found in or added to
``runs/reproduce/store``). Per module set, each merge method's lambda sweep runs on the same
grid and validation rows, lambda is picked on validation, and the pick is scored on the held-out
test half. The merged model's per-row test correctness is compared with linear arithmetic's by an
exact McNemar test (:func:`pemarith.hf.stats.mcnemar_exact`).

- 4.2 (distribution generalisation): ``l*s0 + (1-l)*s1`` of two modules of one task trained
  on the two label-skewed subsets (MiniLM-L6, LoRA and (IA)3).
- 4.3 (multi-tasking): ``l*mnli + (1-l)*rte`` on SmolLM2-135M-Instruct, lambda chosen on the
  mean of the two tasks' validation accuracies.

LoRA merges run in exact mode (TIES/DARE act on the dense delta ``B A``), re-factored at rank
``R = min(d_out, d_in)`` of the smallest adapted layer: no truncation, so differences are the
method's. Results go to ``docs/results/data/merge-methods-<part>.json`` after every cell, so a
stopped run resumes (finished sweeps and scores are read from the store).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from pemarith.fs import write_file
from pemarith.methods import MergeSpec
from pemarith.scenarios import load_recipe
from pemarith.scenarios.runner import Context, ModuleSpec, machine, set_threads
from pemarith.scenarios.store import Store

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "results" / "data"
RUNS = ROOT / "runs" / "reproduce"
#: The methods compared, by label: linear arithmetic (the paper's), TIES and DARE-TIES.
METHODS = {
    "linear": MergeSpec(),
    "ties": MergeSpec("ties", density=0.5),
    "dare_ties": MergeSpec("dare_ties", density=0.5, seed=0),
}
PARTS = {"4.2": "distribution-generalisation", "4.3": "multitask"}


def full_rank(path: Path) -> int:
    """``min(d_out, d_in)`` over the LoRA layers of the adapter in ``path``: the rank at which
    an exact re-factoring of a dense delta loses nothing."""
    from safetensors import safe_open

    with safe_open(str(path / "adapter_model.safetensors"), "np") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    dims = [min(shapes[k.replace("lora_A", "lora_B")][0], s[1]) for k, s in shapes.items() if "lora_A" in k]
    return min(dims)


def correct(preds: dict[str, Any]) -> dict[str, list[bool]]:
    """Per-row correctness of ``{task: {"predictions", "labels"}}``, with all tasks ``pooled``."""
    out = {t: [a == b for a, b in zip(v["predictions"], v["labels"])] for t, v in preds.items()}
    out["pooled"] = [x for t in preds for x in out[t]]
    return out


def compare(
    ctx: Context,
    label: str,
    expr: str,
    paths: dict[str, Path],
    tasks: tuple[str, ...],
    kind: str,
    wrap: Any = None,
    methods: tuple[str, ...] = tuple(METHODS),
    space: str = "dense",
) -> dict[str, Any]:
    """Every method's sweep of ``expr`` over ``paths``, its pick on test, McNemar vs linear."""
    from pemarith.hf.stats import mcnemar_exact

    var = ctx.recipe.sweep.var
    out: dict[str, Any] = {"modules": {}, "methods": {}}
    rows_of: dict[str, dict[str, list[bool]]] = {}
    for name in methods:
        spec = METHODS[name] if name == "linear" else dataclasses.replace(METHODS[name], space=space)
        mode = "exact" if kind == "lora" else "factorwise"
        rank = full_rank(next(iter(paths.values()))) if kind == "lora" and name != "linear" else None
        bench = ctx.bench(f"{label}-{name}", expr, paths, tasks, mode, kind, wrap=wrap, rank=rank, merge=spec)
        if not out["modules"]:
            out["modules"] = {n: bench.score(n, p, "test") for n, p in paths.items()}
        sweep = bench.sweep()
        metric = sweep["metrics"][0]
        lam = sweep["pick"][var]
        rows_of[name] = correct(bench.predictions("merged", expr, lam, "test"))
        cell = {
            "merge": dataclasses.asdict(spec),
            "mode": mode,
            "rank": rank,
            "metric": metric,
            "lambda": lam,
            "validation": sweep["pick"]["validation"],
            "test": sweep["pick"]["test"],
            "curve": [[p[var], p.get(metric)] for p in sweep["validation"]],
            "sweep_seconds": sweep.get("seconds"),
            "sweep_dir": str(bench.sweep_dir),
        }
        out["methods"][name] = cell
        ctx.log(f"      {label} {name}: lambda {lam}, test {metric} {sweep['pick']['test'].get(metric)}")
    if "linear" in rows_of:  # paired tests once every method's rows are in
        lin = rows_of["linear"]
        for name, rows in rows_of.items():
            if name != "linear":
                out["methods"][name]["vs_linear"] = {t: mcnemar_exact(lin[t], rows[t]) for t in rows}
    return out


def part_42(
    ctx: Context, tasks: list[str], seeds: list[int], kinds: list[str], methods: tuple[str, ...], space: str
) -> Any:
    from pemarith.scenarios.distribution import EXPR
    from pemarith.scenarios.subsets import subset_seed

    r, o = ctx.recipe, ctx.recipe.options
    for seed in seeds:
        for task in tasks:
            for kind in kinds:
                spec = ModuleSpec(
                    model=r.model,
                    task=task,
                    method=kind,
                    data="skew0",
                    train=r.train[kind].for_task(task),
                    init_seed=seed,
                    seed=seed,
                    subset_seed=subset_seed(ctx, task),
                    subset_size=o.subset_size,
                )
                paths = {"s0": ctx.module(spec), "s1": ctx.module(dataclasses.replace(spec, data="skew1"))}
                cell = compare(
                    ctx, f"{kind}-seed{seed}", EXPR, paths, (task,), kind, methods=methods, space=space
                )
                yield {"task": task, "kind": kind, "seed": seed, **cell}


def part_43(
    ctx: Context, tasks: list[str], seeds: list[int], kinds: list[str], methods: tuple[str, ...], space: str
) -> Any:
    from pemarith.scenarios.multitask import mean_of_tasks

    r = ctx.recipe
    for seed in seeds:
        for kind in kinds:
            paths = {
                t: ctx.module(
                    ModuleSpec(
                        model=r.model,
                        task=t,
                        method=kind,
                        data="train",
                        train=r.train[kind].for_task(t),
                        init_seed=seed,
                        seed=seed,
                    )
                )
                for t in r.tasks
            }
            cell = compare(
                ctx,
                f"{kind}-seed{seed}",
                r.options.expr,
                paths,
                r.tasks,
                kind,
                wrap=mean_of_tasks,
                methods=methods,
                space=space,
            )
            yield {"task": "+".join(r.tasks), "kind": kind, "seed": seed, **cell}


def results_file(part: str, quick: bool) -> Path:
    return DATA / f"merge-methods-{part}{'-quick' if quick else ''}.json"


def run(args: argparse.Namespace) -> None:
    recipe = load_recipe(PARTS[args.part], quick=args.quick, **({"tasks": args.tasks} if args.tasks else {}))
    if args.limit is not None:
        recipe = dataclasses.replace(recipe, sweep=dataclasses.replace(recipe.sweep, limit=args.limit))
    set_threads(args.threads)
    out = RUNS / f"merge-methods-{args.part}{'-quick' if args.quick else ''}"
    ctx = Context(recipe, out, Store(RUNS / "store"), data_dir=args.data_dir, progress=False, plots=False)
    file = results_file(args.part, args.quick)
    old = json.loads(file.read_text()) if file.is_file() else {}

    def settings(r: dict[str, Any]) -> dict[str, Any]:  # runs on other tasks or seeds add up
        return {k: v for k, v in r.items() if k not in ("tasks", "seeds", "source")}

    same = settings(old.get("recipe", {})) == settings(json.loads(json.dumps(recipe.to_json(), default=str)))
    cells = {(c["task"], c["kind"], c["seed"]): c for c in old.get("cells", [])} if same else {}
    kinds = args.kinds or [k for k in ("lora", "ia3") if k in recipe.methods]
    part = part_42 if args.part == "4.2" else part_43
    methods = tuple(m for m in METHODS if m in (args.methods or METHODS))  # the report needs linear
    for cell in part(ctx, list(recipe.tasks), args.seeds or list(recipe.seeds), kinds, methods, args.space):
        cells[(cell["task"], cell["kind"], cell["seed"])] = cell
        done = {
            "tasks": sorted({c["task"] for c in cells.values()}),
            "seeds": sorted({c["seed"] for c in cells.values()}),
        }
        doc = {
            "part": args.part,
            "recipe": {**recipe.to_json(), **done},
            "methods": list(METHODS),  # a cell's "methods" may hold fewer (--methods)
            "updated": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "cells": sorted(cells.values(), key=lambda c: (c["task"], c["kind"], c["seed"])),
        }
        DATA.mkdir(parents=True, exist_ok=True)
        write_file(file, json.dumps(doc, indent=1, default=str) + "\n")
        ctx.log(f"wrote {file}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=sorted(PARTS), help="the paper's section to run")
    p.add_argument("--quick", action="store_true", help="the recipe's tiny [quick] sizes")
    p.add_argument("--tasks", nargs="+", help="tasks of the recipe to run (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the recipe's)")
    p.add_argument("--kinds", nargs="+", choices=("lora", "ia3"), help="module kinds")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), help="methods (default: all)")
    p.add_argument(
        "--space",
        choices=("dense", "core"),
        default="dense",
        help="where TIES/DARE run on LoRA: the dense update (default) or the core space (fast)",
    )
    p.add_argument("--limit", type=int, help="evaluation rows per split and task (recipe's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--data-dir", help="the data directory (default $PEMARITH_DATA_DIR)")
    p.add_argument("--report", action="store_true", help="write docs/results/merge-methods.md")
    args = p.parse_args(argv)
    if args.report:
        from merge_methods_report import write_report

        write_report(DATA, ROOT / "docs" / "results" / "merge-methods.md")
        return 0
    if args.part is None:
        p.error("give --part 4.2 or --part 4.3 (or --report)")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
