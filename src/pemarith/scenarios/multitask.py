"""Section 4.3: composition for multi-tasking (Table 3, Figure 2).

One module per task (MNLI and RTE, trained as a generator on the Appendix B prompts: the answer
word after "Does X imply that Y? Please answer yes, maybe or no."), merged as
``l*mnli + (1-l)*rte``. A causal LM has no task-specific head, so the modules compose whole.
Lambda is chosen on validation by the mean of the tasks' accuracies (the Avg. column of
Table 3); every row is scored on both tasks' validation and test halves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..hf.evaluator import Evaluator, Predictor
from ..hf.plot import pyplot, save_png
from . import paper
from .distribution_report import settings_text, timing_table
from .recipe import METHODS, RecipeError
from .report import LABELS, fmt, fmt_paper, group, table, task_label
from .runner import Context, ModuleSpec
from .scenario import Scenario

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class MultitaskOptions:
    """``[options]`` of 4.3: the composition of the per-task modules (named by task)."""

    expr: str = "l*mnli + (1-l)*rte"

    def __post_init__(self) -> None:
        if not self.expr.strip():
            raise RecipeError("[options] expr must not be empty")


class MeanSession:
    """A sweep session whose scores also hold ``mean``: the mean of each task's first metric.

    Selecting ``max`` then picks lambda by the average over the tasks (Table 3's Avg.).
    """

    def __init__(self, inner: Evaluator):
        self.inner = inner
        self.text_only = inner.text_only

    def load(self, pem: Any, mode: str, rank: int | None, keep: str | None) -> None:
        self.inner.load(pem, mode, rank, keep)

    def predict(self, split: str) -> dict[str, dict[str, list]]:
        """The inner evaluator's per-row predictions (the mean column has none of its own)."""
        if not isinstance(self.inner, Predictor):
            raise PemarithError(f"{type(self.inner).__name__} gives no per-row predictions")
        return self.inner.predict(split)

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        scores = self.inner.evaluate(split, base=base)
        firsts = self.inner.primary_metrics(list(scores))
        scores["mean"] = sum(scores[k] for k in firsts) / len(firsts)
        return scores

    def primary_metrics(self, keys: Sequence[str]) -> list[str]:
        return ["mean", *self.inner.primary_metrics([k for k in keys if k != "mean"])]


def mean_of_tasks(session: Evaluator) -> MeanSession:
    return MeanSession(session)


def multitask_cell(ctx: Context, method: str, seed: int) -> dict[str, Any]:
    r = ctx.recipe
    if method == "full":
        raise PemarithError(
            "multitask: full fine-tuning of the causal LM is not part of this "
            "reproduction (too slow on CPU); use lora and ia3"
        )
    paths = {}
    for task in r.tasks:
        spec = ModuleSpec(
            model=r.model,
            task=task,
            method=method,
            data="train",
            train=r.train[method].for_task(task),
            init_seed=seed,
            seed=seed,
        )
        paths[task] = ctx.module(spec)
    bench = ctx.bench(
        f"{method}-seed{seed}", r.options.expr, paths, r.tasks, "factorwise", method, wrap=mean_of_tasks
    )
    sweep = bench.sweep()
    rows: dict[str, dict[str, Any]] = {}
    for task, p in paths.items():
        rows[task] = {split: bench.score(task, p, split) for split in SPLITS}
    rows["merged"] = {split: sweep["pick"][split] for split in SPLITS}
    var = r.sweep.var
    keys = [k for k in sweep["metrics"]]
    return {
        "method": method,
        "seed": seed,
        "mode": "factorwise",
        "lambda": sweep["pick"][var],
        "metrics": keys,
        "rows": rows,
        "paired": paired_tests(bench, r.options.expr, list(paths), sweep["pick"][var]),
        "curve": [[p[var], {k: p.get(k) for k in keys}] for p in sweep["validation"]],
        "train_seconds": {n: ctx.seconds.get(str(p)) for n, p in paths.items()},
        "train_cpu_seconds": {n: ctx.cpu_seconds.get(str(p)) for n, p in paths.items()},
        "sweep_seconds": sweep.get("seconds"),
        "sweep_dir": str(bench.sweep_dir),
        "modules": {n: str(p) for n, p in paths.items()},
        "task": "+".join(r.tasks),
    }


def paired_tests(bench: Any, expr: str, names: list[str], lam: float) -> dict[str, Any]:
    """Exact McNemar tests of the merge against each module alone on the test half: per task
    and on both tasks' rows pooled (the rows behind the Avg. column). The merge at lambda 1 or
    0 is one module, whose predictions are reused."""
    from ..expr import normal_form
    from ..hf.stats import mcnemar_exact

    preds = {n: bench.predictions(n, n, None, "test") for n in names}
    var = bench.ctx.recipe.sweep.var
    terms = {n: c for n, c in normal_form(expr, names, {var: lam}).items() if c != 0}
    alone = next(iter(terms)) if len(terms) == 1 and next(iter(terms.values())) == 1 else None
    merged = preds[alone] if alone else bench.predictions("merged", expr, lam, "test")

    def correct(p: Mapping[str, Any]) -> dict[str, list[bool]]:
        out = {t: [a == b for a, b in zip(v["predictions"], v["labels"])] for t, v in p.items()}
        out["pooled"] = [x for t in p for x in out[t]]
        return out

    m = correct(merged)
    return {f"vs {n}": {t: mcnemar_exact(correct(preds[n])[t], m[t]) for t in m} for n in names}


def run(ctx: Context) -> dict[str, Any]:
    r = ctx.recipe
    kept = {(c["method"], c["seed"]): c for c in ctx.previous_cells()}
    order = sorted(r.methods, key=lambda m: METHODS.index(m))

    def save() -> dict[str, Any]:
        cells = sorted(kept.values(), key=lambda c: (METHODS.index(c["method"]), c["seed"]))
        return ctx.save({"cells": cells})

    for seed in r.seeds:
        for method in order:
            kept[(method, seed)] = multitask_cell(ctx, method, seed)
            save()
    return save()


def _col(task: str) -> str:
    return f"{task}.accuracy"


def main_table(results: Mapping[str, Any], split: str) -> str:
    """Table 3: per kind, the module of each task and the merge, scored on every task + mean."""
    cells = results["cells"]
    tasks = results["recipe"]["tasks"]
    header = ["method", "modules used"]
    for t in tasks:
        header += [f"{task_label(t)} acc", "paper"]
    header += ["Avg.", "paper"]
    rows = []
    for (method,), cs in group(cells, "method").items():
        ref = paper.TABLE3.get(method, {})
        for row in [*sorted(tasks, key=lambda t: t != "rte"), "merged"]:
            line = [LABELS[method], task_label(row) if row != "merged" else "Merge"]
            for t in [*tasks, "mean"]:
                key = "mean" if t == "mean" else _col(t)
                vals = [c["rows"][row][split].get(key) for c in cs]
                line += [
                    fmt("accuracy", [v for v in vals if v is not None]),
                    fmt_paper("accuracy", ref.get(row, {}).get(t)),
                ]
            rows.append(line)
    return table(header, rows, "ll" + "rr" * (len(tasks) + 1))


def lambda_table(results: Mapping[str, Any]) -> str:
    rows = [
        [LABELS[m], ", ".join(f"{c['lambda']:g}" for c in cs), ", ".join(str(c["seed"]) for c in cs)]
        for (m,), cs in group(results["cells"], "method").items()
    ]
    return table(["method", "lambda (by seed)", "seeds"], rows, "lll")


def paired_table(results: Mapping[str, Any]) -> str:
    """Each cell's merge against each module alone on test (exact McNemar): b = rows the module
    gets right and the merge wrong, c = the reverse."""
    cells = [c for c in results["cells"] if c.get("paired")]
    if not cells:
        return "(not measured: these results predate the paired tests)"
    rows = []
    for c in cells:
        for versus, tests in c["paired"].items():
            for task, t in tests.items():
                rows.append(
                    [
                        LABELS[c["method"]],
                        str(c["seed"]),
                        f"{c['lambda']:g}",
                        f"merge {versus}",
                        "both (pooled)" if task == "pooled" else task_label(task),
                        str(t["b"]),
                        str(t["c"]),
                        f"{t['p']:.3g}" + ("*" if t["p"] < 0.05 else ""),
                    ]
                )
    return table(
        [
            "method",
            "seed",
            "lambda",
            "comparison",
            "test rows of",
            "b (module right, merge wrong)",
            "c (merge right, module wrong)",
            "McNemar exact p",
        ],
        rows,
        "lrrllrrr",
    )


def sections(results: Mapping[str, Any]) -> dict[str, str]:
    if not results.get("cells"):
        return {"settings": settings_text(results), "table-test": "(no finished cells yet)"}
    return {
        "settings": settings_text(results),
        "table-test": main_table(results, "test"),
        "table-validation": main_table(results, "validation"),
        "lambdas": lambda_table(results),
        "paired": paired_table(results),
        "timing": timing_table(results),
    }


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Figure 2: each task's validation accuracy (and their mean) against lambda, per kind."""
    plt = pyplot()

    cells = results.get("cells", [])
    if not cells:
        return []
    from matplotlib.lines import Line2D

    methods = list(dict.fromkeys(c["method"] for c in cells))
    metrics = list(dict.fromkeys(k for c in cells for k in c["metrics"]))
    seeds = sorted({c["seed"] for c in cells})
    color = {k: f"C{i}" for i, k in enumerate(metrics)}  # a colour per metric,
    style = {s: ("-", "--", ":", "-.")[i % 4] for i, s in enumerate(seeds)}  # a line style per seed
    fig, axes = plt.subplots(1, len(methods), figsize=(4.8 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for c in [c for c in cells if c["method"] == method]:
            for key in c["metrics"]:
                pts = [(x, s.get(key)) for x, s in c["curve"] if s.get(key) is not None]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    style[c["seed"]],
                    color=color[key],
                    marker="o",
                    markersize=2.5,
                    linewidth=1.2,
                )
        ax.set_title(f"{LABELS[method]}: {results['recipe']['options']['expr']}")
        ax.set_xlabel("lambda (1 = first module, 0 = second)")
        ax.set_ylabel("accuracy (validation)")
        ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=color[k], label=k) for k in metrics]
        handles += [
            Line2D([], [], color="gray", linestyle=style[s], label=f"seed {s}")
            for s in sorted({c["seed"] for c in cells if c["method"] == method})
        ]
        ax.legend(handles=handles, fontsize=6)
    fig.tight_layout()
    path = save_png(fig, out / "multitask.png")
    return [path]


SCENARIO = Scenario(
    name="multitask",
    section="4.3",
    options=MultitaskOptions,
    run=run,
    sections=sections,
    plot=plot,
    title="Multi-tasking (section 4.3, Table 3, Figure 2)",
)
