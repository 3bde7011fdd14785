"""Section 4.2: composition for distribution generalisation (Table 2, Figure 5).

For each task, seed and module kind: two modules trained from one initialisation on the two
label-skewed subsets of the train split (Appendix B, :mod:`pemarith.hf.skew`), merged as
``l*s0 + (1-l)*s1``; lambda chosen on the validation half of the dev set, every row reported on
both halves (validation, where lambda was chosen, as the paper reports; test, held out). The
full-set reference is one module trained on both subsets together. Beyond the paper: several
seeds (mean ± std) and, for LoRA, the ``exact`` composition beside the paper's factor-wise one.

A cell is one (task, method, mode, init, seed); it holds the rows s0, s1, avg (their mean),
merged and fullset for both splits, the chosen lambda and the validation curve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .distribution_report import plot, sections
from .recipe import METHODS, RecipeError
from .report import class_shares, one_class
from .runner import Context, ModuleSpec
from .scenario import Scenario
from .subsets import skew_table, subset_seed

EXPR = "l*s0 + (1-l)*s1"
SPLITS = ("validation", "test")


@dataclass(frozen=True)
class SkewOptions:
    """``[options]`` of the skewed-subset settings (4.2 and 4.7).

    ``selected`` pins, per task, the class that Appendix B's random draw puts 80% of in ``s0``:
    the subset seed used is the first one from ``subset_seed`` up whose draw selects it (the
    paper's Table 9 shows which class its draw selected; which one matters: when the majority
    class is selected, s0 can hold almost nothing else, e.g. no unacceptable CoLA sentence).
    ``fullset_methods``: kinds that also get the reference trained on both subsets together.
    ``exact``: also sweep LoRA merges in exact mode. ``diff_init_offset``: 4.7's second module
    uses init seed ``seed + diff_init_offset``.
    """

    subset_size: int = 1000
    subset_seed: int = 0
    selected: Mapping[str, int] = dataclasses.field(default_factory=dict)
    fullset_methods: tuple[str, ...] = ("lora",)
    exact: bool = True
    diff_init_offset: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "fullset_methods", tuple(self.fullset_methods))
        object.__setattr__(self, "selected", dict(self.selected))
        for task, c in self.selected.items():
            if not isinstance(c, int) or c < 0:
                raise RecipeError(f"[options.selected] {task}: a class index, not {c!r}")
        for m in self.fullset_methods:
            if m not in METHODS:
                raise RecipeError(f"[options] fullset_methods: unknown kind {m!r}")
        if self.subset_size < 2:
            raise RecipeError(f"[options] subset_size must be >= 2, not {self.subset_size}")
        if self.diff_init_offset == 0:
            raise RecipeError("[options] diff_init_offset must not be 0 (that is the same init)")


def test_shares(ctx: Context, task: str, split_seed: int) -> list[float]:
    """The class shares of the rows the test scores are computed on (the recipe's ``limit``)."""
    from ..hf.data import load_split
    from ..hf.tasks import get_task

    if get_task(task).kind != "classification":
        return []
    rows = load_split(task, "test", data_dir=ctx.data_dir, seed=split_seed)[: ctx.recipe.sweep.limit]
    return class_shares([r["label"] for r in rows])


def skew_cell(
    ctx: Context,
    task: str,
    method: str,
    seed: int,
    mode: str = "factorwise",
    init: str = "same",
    fullset: bool = False,
) -> dict[str, Any]:
    """Train (or find) s0, s1 (and the full-set module), sweep the merge, score every row."""
    r, o = ctx.recipe, ctx.recipe.options
    spec = ModuleSpec(
        model=r.model,
        task=task,
        method=method,
        data="skew0",
        train=r.train[method].for_task(task),
        init_seed=seed,
        seed=seed,
        subset_seed=subset_seed(ctx, task),
        subset_size=o.subset_size,
    )
    init1 = seed if init == "same" else seed + o.diff_init_offset
    paths = {
        "s0": ctx.module(spec),
        "s1": ctx.module(dataclasses.replace(spec, data="skew1", init_seed=init1)),
    }
    extra = {}
    if fullset:
        extra["fullset"] = ctx.module(dataclasses.replace(spec, data="both"))
    label = f"{method}-{mode}-{init}init-seed{seed}"
    bench = ctx.bench(label, EXPR, paths, (task,), mode, method)
    sweep = bench.sweep()
    metric = sweep["metrics"][0]
    scores: dict[str, dict[str, float | None]] = {}
    for split in SPLITS:
        row = {n: bench.score(n, p, split).get(metric) for n, p in {**paths, **extra}.items()}
        row["avg"] = (row["s0"] + row["s1"]) / 2
        row["merged"] = sweep["pick"][split].get(metric)
        scores[split] = row
    var = r.sweep.var
    shares = test_shares(ctx, task, bench.config().seed)  # the split the bench evaluates
    degenerate = [n for n in ("s0", "s1") if one_class(bench.score(n, paths[n], "test"), shares)]
    return {
        "task": task,
        "method": method,
        "mode": mode,
        "init": init,
        "seed": seed,
        "metric": metric,
        "lambda": sweep["pick"][var],
        "scores": scores,
        "one_class": degenerate,
        "curve": [[p[var], p.get(metric)] for p in sweep["validation"]],
        "train_seconds": {n: ctx.seconds.get(str(p)) for n, p in {**paths, **extra}.items()},
        "train_cpu_seconds": {n: ctx.cpu_seconds.get(str(p)) for n, p in {**paths, **extra}.items()},
        "sweep_seconds": sweep.get("seconds"),
        "sweep_dir": str(bench.sweep_dir),
        "modules": {n: str(p) for n, p in {**paths, **extra}.items()},
    }


def cell_key(c: Mapping[str, Any]) -> tuple:
    return (c["task"], c["method"], c["mode"], c["init"], c["seed"])


class Results:
    """Cells by key, saved after each one (earlier cells of the same settings kept)."""

    def __init__(self, ctx: Context, extra: dict[str, Any] | None = None):
        self.ctx = ctx
        self.cells = {cell_key(c): c for c in ctx.previous_cells()}
        self.extra = extra or {}

    def add(self, cell: dict[str, Any]) -> None:
        self.cells[cell_key(cell)] = cell
        self.saved = self.ctx.save(self.dict())

    def finish(self) -> dict[str, Any]:
        """The results as saved (with recipe, machine and store counts)."""
        return self.ctx.save(self.dict())

    def dict(self) -> dict[str, Any]:
        order = {t: i for i, t in enumerate(self.ctx.recipe.tasks)}
        cells = sorted(self.cells.values(), key=lambda c: (order.get(c["task"], 99), c["task"], c["seed"]))
        return {**self.extra, "cells": cells}


def run(ctx: Context) -> dict[str, Any]:
    """4.2: every (seed, task, method) cell, LoRA first, exact beside factor-wise."""
    r, o = ctx.recipe, ctx.recipe.options
    results = Results(ctx, {"skew": skew_table(ctx, r.tasks)})
    methods = sorted(r.methods, key=lambda m: METHODS.index(m))  # lora, ia3, full
    for seed in r.seeds:
        for task in r.tasks:
            for method in methods:
                results.add(skew_cell(ctx, task, method, seed, fullset=method in o.fullset_methods))
                if method == "lora" and o.exact:
                    results.add(skew_cell(ctx, task, method, seed, mode="exact"))
    return results.finish()


SCENARIO = Scenario(
    name="distribution-generalisation",
    section="4.2",
    options=SkewOptions,
    run=run,
    sections=sections,
    plot=plot,
    title="Distribution generalisation (section 4.2, Table 2)",
)
