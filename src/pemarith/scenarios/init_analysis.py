"""Section 4.7: merging LoRA modules trained from the same or from different initialisations.

The 4.2 LoRA merges again, once with both subset modules from one init seed (the 4.2 modules
themselves: the store is content-addressed, so the recipe that ``extends`` 4.2's shares them)
and once with the second module from init seed ``seed + diff_init_offset``. Table 7 is the
merged score minus the average of the two subset modules, same init against different init.

The init seed draws LoRA's A matrices and the new classification head (``modules_to_save``);
the paper's RoBERTa modules also had a new head per seed, so both differ here as there.

Beyond the paper, each cell also records :func:`merge_diagnostics` of its two modules (from the
adapter files, in seconds): whether the factor-wise merge still points where the exact merge
does, which is what a shared A initialisation is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import paper
from .distribution import Results, SkewOptions, skew_cell, skew_table
from .distribution_report import (
    class_table,
    composition_table,
    lambda_table,
    plot_curves,
    settings_text,
    timing_table,
)
from .report import fmt, fmt_paper, group, table, task_label
from .runner import Context
from .scenario import Scenario

INITS = ("same", "diff")


def run(ctx: Context) -> dict[str, Any]:
    r = ctx.recipe
    results = Results(ctx, {"skew": skew_table(ctx, r.tasks)})
    for seed in r.seeds:
        for task in r.tasks:
            for init in INITS:
                cell = skew_cell(ctx, task, "lora", seed, init=init)
                cell["diagnostics"] = merge_diagnostics(cell["modules"])
                results.add(cell)
    return results.finish()


def merge_diagnostics(modules: Mapping[str, str], lam: float = 0.5) -> dict[str, float | None]:
    """:func:`pemarith.diagnostics.diagnose` of ``lam*s0 + (1-lam)*s1`` (LoRA updates only; the
    classification heads are full weights and are not compared): ``cosine`` of the two updates,
    ``retained`` norm, and ``factorwise_cosine`` ``cos(F, E)`` and ``cross_ratio`` of the
    factor-wise merge ``F`` against the exact one ``E``. A fixed ``lam`` = 0.5 (not the picked
    one) so that cells compare."""
    import pemarith
    from pemarith.diagnostics import diagnose

    d = diagnose(lam * pemarith.load(modules["s0"], "s0") + (1 - lam) * pemarith.load(modules["s1"], "s1"))
    return {
        "lambda": lam,
        "cosine": float(d.cosine()[0, 1]),
        "retained": d.retained(),
        "factorwise_cosine": d.factorwise_cosine(),
        "cross_ratio": d.cross_ratio(),
    }


def diagnostics_table(results: Mapping[str, Any]) -> str:
    """Per task and init: the diagnostics of the merge at lambda 0.5, mean over seeds."""
    cells = [c for c in results["cells"] if c.get("diagnostics")]
    if not cells:
        return "(not measured: these results predate the diagnostics)"
    keys = ("cosine", "retained", "factorwise_cosine", "cross_ratio")
    rows = []
    for (task, init), cs in group(cells, "task", "init").items():
        vals = [[c["diagnostics"][k] for c in cs if c["diagnostics"].get(k) is not None] for k in keys]
        rows.append(
            [task_label(task), init, *(f"{sum(v) / len(v):.3f}" if v else "-" for v in vals), str(len(cs))]
        )
    return table(
        ["task", "init", "cos(D_s0, D_s1)", "retained norm", "cos(F, E)", "cross / own", "seeds"],
        rows,
        "llrrrrr",
    )


def delta_table(results: Mapping[str, Any], split: str) -> str:
    """Table 7: m - avg(s0, s1) by task, same init and different init (ours, the paper's)."""
    cells = [c for c in results["cells"] if c["method"] == "lora" and c["mode"] == "factorwise"]
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    by = group(cells, "init", "task")
    header = ["init"]
    for t in tasks:
        header += [task_label(t), "paper"]
    header += ["mean (accuracy tasks)", "paper Avg. (6 accuracy tasks)"]
    rows = []
    for init in INITS:
        line = [f"{init} init"]
        acc_means = []
        for t in tasks:
            cs = by.get((init, t), [])
            metric = cs[0]["metric"] if cs else "accuracy"
            deltas = [c["scores"][split]["merged"] - c["scores"][split]["avg"] for c in cs]
            line += [
                fmt(metric, deltas, signed=True, extra=1) if cs else "-",
                fmt_paper(metric, paper.TABLE7[init].get(t), signed=True, extra=1),
            ]
            if deltas and metric == "accuracy":
                acc_means.append(sum(deltas) / len(deltas))
        line += [
            fmt("accuracy", [sum(acc_means) / len(acc_means)], signed=True, extra=1) if acc_means else "-",
            fmt_paper("accuracy", paper.TABLE7[init]["avg"], signed=True, extra=1),
        ]
        rows.append(line)
    return table(header, rows, "l" + "rr" * len(tasks) + "rr")


def rows_table(results: Mapping[str, Any], split: str) -> str:
    """The rows behind Table 7: s0, s1, their average and the merge, per task and init."""
    by = group(results["cells"], "task", "init")
    rows = []
    for (task, init), cs in by.items():
        metric = cs[0]["metric"]
        vals = {k: [c["scores"][split][k] for c in cs] for k in ("s0", "s1", "avg", "merged")}
        rows.append(
            [
                task_label(task),
                init,
                *(fmt(metric, vals[k]) for k in vals),
                ", ".join(f"{c['lambda']:g}" for c in cs),
            ]
        )
    return table(["task", "init", "s0", "s1", "avg", "m", "lambda (by seed)"], rows, "llrrrrl")


def sections(results: Mapping[str, Any]) -> dict[str, str]:
    if not results.get("cells"):
        return {"settings": settings_text(results), "table-test": "(no finished cells yet)"}
    return {
        "settings": settings_text(results),
        "table-test": delta_table(results, "test"),
        "table-validation": delta_table(results, "validation"),
        "rows-test": rows_table(results, "test"),
        "lambdas": lambda_table(results),
        "composition": composition_table(results),
        "diagnostics": diagnostics_table(results),
        "subsets": class_table(results),
        "timing": timing_table(results),
    }


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Like Figure 3: the merge curves with the same and with different initialisation."""
    return plot_curves(results, out, prefix="init", split_by="init")


SCENARIO = Scenario(
    name="init-analysis",
    section="4.7",
    options=SkewOptions,
    run=run,
    sections=sections,
    plot=plot,
    title="Initialisation analysis (section 4.7, Table 7)",
)
