"""Section 4.2's tables and plot (distribution generalisation, Table 2), from the results of
:func:`pemarith.scenarios.distribution.run`; also the shared settings and timing tables
(:func:`settings_text`, :func:`timing_table`) the other settings' reports use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..hf.plot import pyplot, save_png
from . import paper
from .recipe import METHODS
from .report import LABELS, fmt, fmt_paper, group, seconds, table, task_label


def _values(cells: list[Mapping[str, Any]], split: str, row: str) -> list[float]:
    return [c["scores"][split][row] for c in cells if c["scores"][split].get(row) is not None]


def _deltas(cells: list[Mapping[str, Any]], split: str) -> list[float]:
    return [c["scores"][split]["merged"] - c["scores"][split]["avg"] for c in cells]


ROWS = (
    ("s0", "s0"),
    ("s1", "s1"),
    ("avg", "avg(s0, s1)"),
    ("merged", "m"),
    ("delta", "m - avg"),
    ("fullset", "fullset"),
)


def main_table(results: Mapping[str, Any], split: str) -> str:
    """Table 2's shape: rows method x (s0, s1, avg, m, m - avg, fullset), a column pair per task
    (ours, the paper's); LoRA exact-mode merges as extra rows."""
    cells = [c for c in results["cells"] if c["init"] == "same"]
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    by = group(cells, "method", "mode", "task")
    header = ["method", "row"]
    for t in tasks:
        metric = next(c["metric"] for c in cells if c["task"] == t)
        short = {"matthews_corr": "MCC", "spearman": "Spearman", "accuracy": "acc"}.get(metric, metric)
        header += [f"{task_label(t)} {short}", "paper"]
    rows, flagged = [], []
    for method in [m for m in METHODS if any(c["method"] == m for c in cells)]:
        for mode in ("factorwise", "exact"):
            if not any((method, mode, t) in by for t in tasks):
                continue
            for key, label in ROWS:
                if mode == "exact" and key not in ("merged", "delta"):
                    continue
                name = f"{LABELS[method]}" + (" exact" if mode == "exact" else "")
                line = [name, label]
                for t in tasks:
                    cs = by.get((method, mode, t), [])
                    metric = cs[0]["metric"] if cs else "accuracy"
                    p = paper.TABLE2.get(method, {})
                    if key == "delta":
                        ours = fmt(metric, _deltas(cs, split), signed=True) if cs else "-"
                        bad = [c for c in cs if c.get("one_class")]
                        if bad:
                            ours += f" (one-class module in {len(bad)} of {len(cs)} seeds)"
                            flagged.append(
                                f"{task_label(t)} {name}: "
                                + ", ".join(f"seed {c['seed']} {'+'.join(c['one_class'])}" for c in bad)
                            )
                        pm, pa = p.get("m", {}).get(t), None
                        if pm is not None:
                            pa = pm - (p["s0"][t] + p["s1"][t]) / 2
                        line += [ours, fmt_paper(metric, pa if mode == "factorwise" else None, signed=True)]
                        continue
                    ours = fmt(metric, _values(cs, split, key)) if cs else "-"
                    ref = (
                        None
                        if mode == "exact"
                        else (None if key == "avg" else p.get("m" if key == "merged" else key, {}).get(t))
                    )
                    if key == "avg" and p.get("s0", {}).get(t) is not None:
                        ref = (p["s0"][t] + p["s1"][t]) / 2
                    line += [ours, fmt_paper(metric, ref)]
                rows.append(line)
    align = "ll" + "rr" * len(tasks)
    text = table(header, rows, align)
    if flagged:
        text += (
            "\n\nA module marked one-class predicts a single class on the test half (MCC 0, F1 at its "
            "one-class value, one predicted class counted, or an accuracy equal to a class's share of "
            "the test rows, which is what predicting that class alone scores): `m - avg` there measures "
            "a degenerate module, not a composition. " + "; ".join(sorted(set(flagged))) + "."
        )
    return text


def composition_table(results: Mapping[str, Any]) -> str:
    """Where a merge is a composition, seed by seed: the paper's claim in its strong form.

    ``m - avg`` is positive whenever lambda lands on an end of the grid (the merge is then one
    module alone) and that module beats the average, so it cannot tell composing from picking.
    Per (task, kind, mode, init): the seeds whose lambda is inside (0, 1), and the merge minus
    the *better module* (the one of s0, s1 with the higher validation score, chosen without
    test labels like lambda) on the test half, with the seeds where it is positive; and the
    untuned midpoint merge ``0.5*s0 + 0.5*s1`` against that module on validation (a merge that
    collapses shows there even when the sweep escapes to an end of the grid).
    """
    rows = []
    for (task, method, mode, init), cs in group(results["cells"], "task", "method", "mode", "init").items():
        metric = cs[0]["metric"]
        diffs, halves = [], []
        for c in cs:
            val, test = c["scores"]["validation"], c["scores"]["test"]
            best = "s0" if val["s0"] >= val["s1"] else "s1"
            diffs.append(test["merged"] - test[best])
            half = [v for lam, v in c.get("curve", []) if abs(lam - 0.5) < 1e-9]
            if half:
                halves.append(half[0] - val[best])
        inside = sum(0 < c["lambda"] < 1 for c in cs)
        rows.append(
            [
                task_label(task),
                LABELS[method],
                mode,
                init,
                len(cs),
                f"{inside} of {len(cs)}",
                fmt(metric, diffs, signed=True),
                f"{sum(d > 0 for d in diffs)} of {len(cs)}",
                fmt(metric, halves, signed=True) if halves else "-",
            ]
        )
    return table(
        [
            "task",
            "method",
            "mode",
            "init",
            "seeds",
            "lambda inside (0, 1)",
            "m - better module (test)",
            "seeds m > better module",
            "m at l = 0.5 - better module (validation)",
        ],
        rows,
        "llllrrrrr",
    )


def lambda_table(results: Mapping[str, Any]) -> str:
    cells = results["cells"]
    by = group(cells, "task", "method", "mode", "init")
    rows = []
    for (task, method, mode, init), cs in by.items():
        lams = ", ".join(f"{c['lambda']:g}" for c in sorted(cs, key=lambda c: c["seed"]))
        rows.append(
            [
                task_label(task),
                LABELS[method],
                mode,
                init,
                lams,
                ", ".join(str(c["seed"]) for c in sorted(cs, key=lambda c: c["seed"])),
            ]
        )
    return table(["task", "method", "mode", "init", "lambda (by seed)", "seeds"], rows, "llllll")


def class_table(results: Mapping[str, Any]) -> str:
    rows = []
    for task, t in results.get("skew", {}).items():
        ref = paper.TABLE9.get(task, {})
        rows.append(
            [
                task_label(task),
                t["selected"],
                t.get("subset_seed", "-"),
                " / ".join(map(str, t["s0"])),
                " / ".join(map(str, t["s1"])),
                " / ".join(map(str, ref["s0"])) if ref else "-",
                " / ".join(map(str, ref["s1"])) if ref else "-",
            ]
        )
    return table(
        ["task", "selected class", "subset seed", "s0 (ours)", "s1 (ours)", "s0 (paper)", "s1 (paper)"],
        rows,
        "lrrllll",
    )


def timing_table(results: Mapping[str, Any]) -> str:
    by = group(results["cells"], "task", "method")
    rows = []
    totals = {"train": {}, "cpu": {}, "sweeps": 0.0}
    for (task, method), cs in by.items():
        # a module serves several cells (exact mode, 4.7's same init): count it once
        per_module = {c["modules"][n]: s for c in cs for n, s in c["train_seconds"].items() if s}
        cpu_per_module = {
            c["modules"][n]: s for c in cs for n, s in c.get("train_cpu_seconds", {}).items() if s
        }
        train, cpu = list(per_module.values()), list(cpu_per_module.values())
        sweeps = [c["sweep_seconds"] for c in cs if c.get("sweep_seconds")]
        totals["train"].update(per_module)
        totals["cpu"].update(cpu_per_module)
        totals["sweeps"] += sum(sweeps)
        rows.append(
            [
                task_label(task),
                LABELS[method],
                len(train),
                seconds(sum(train) / len(train)) if train else "-",
                seconds(sum(cpu) / len(cpu)) if cpu else "-",
                seconds(sum(sweeps) / len(sweeps)) if sweeps else "-",
            ]
        )
    if len(by) > 1:  # the whole run: every module once, every sweep
        cpu_total = sum(totals["cpu"].values())
        rows.append(
            [
                "all",
                "sum over the run",
                len(totals["train"]),
                seconds(sum(totals["train"].values())),
                seconds(cpu_total) if cpu_total else "-",
                seconds(totals["sweeps"]),
            ]
        )
    return table(
        ["task", "method", "modules", "training per module (wall)", "(CPU)", "sweep per merge (wall)"],
        rows,
        "llrrrr",
    )


def settings_text(results: Mapping[str, Any]) -> str:
    r = results["recipe"]
    lines = [
        f"- model: `{r['model']}`; tasks: {', '.join(task_label(t) for t in r['tasks'])}; "
        f"seeds: {', '.join(map(str, r['seeds']))}"
        + (" — **quick run: tiny sizes, not a result**" if r.get("quick") else "")
    ]
    if r.get("sizes"):
        lines.append(f"- sizes: {r['sizes']}")
    for m, t in r["train"].items():
        if m in r["methods"]:
            length = f"{t['steps']} steps" if t.get("steps") else f"{t['epochs']} epochs"
            lines.append(
                f"- {LABELS[m]}: lr {t['lr']:g}, {length}, batch {t['batch_size']}, "
                f"max length {t['max_length']}, weight decay {t['weight_decay']:g}"
                + (f", r {t['r']}, alpha {t['alpha']:g}" if m == "lora" else "")
            )
    s = r["sweep"]
    lines.append(
        f"- lambda: grid `{s['grid']}` ({s['search']} search), rule `{s['select']}` on "
        f"validation; evaluation rows per split: {s['limit'] or 'all'}"
    )
    m = results.get("machine", {})
    lines.append(
        f"- computed on: {m.get('cpus', '?')} CPUs, torch {m.get('torch', '?')} with "
        f"{m.get('threads', '?')} thread(s); wall time of the last invocation "
        f"{seconds(results.get('elapsed_seconds', 0))}; updated {results.get('updated', '?')}"
    )
    return "\n".join(lines)


def sections(results: Mapping[str, Any]) -> dict[str, str]:
    """The generated blocks: settings, Table 2 on test and on validation, lambdas, Table 9, times."""
    if not results.get("cells"):
        return {"settings": settings_text(results), "table-test": "(no finished cells yet)"}
    return {
        "settings": settings_text(results),
        "table-test": main_table(results, "test"),
        "table-validation": main_table(results, "validation"),
        "lambdas": lambda_table(results),
        "composition": composition_table(results),
        "subsets": class_table(results),
        "timing": timing_table(results),
    }


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Figure 5's curves: one figure per task, a panel per kind, validation metric against
    lambda (a line per seed and mode), the full-set module as a dashed line."""
    return plot_curves(results, out, prefix="dg", split_by="mode")


def plot_curves(results: Mapping[str, Any], out: Path, prefix: str, split_by: str) -> list[Path]:
    plt = pyplot()

    written = []
    cells = results.get("cells", [])
    for task, tcells in group(cells, "task").items():
        task = task[0]
        methods = [m for m in METHODS if any(c["method"] == m for c in tcells)]
        fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.6), squeeze=False)
        for ax, method in zip(axes[0], methods):
            mcells = [c for c in tcells if c["method"] == method]
            styles = {}
            for c in sorted(
                mcells, key=lambda c: (c[split_by] not in ("factorwise", "same"), c[split_by], c["seed"])
            ):
                kind = c[split_by]
                style = styles.setdefault(kind, ("-", "--", ":")[len(styles) % 3])
                xs = [p[0] for p in c["curve"] if p[1] is not None]
                ys = [p[1] for p in c["curve"] if p[1] is not None]
                ax.plot(xs, ys, style, marker="o", markersize=2.5, label=f"{kind} seed {c['seed']}")
                full = c["scores"]["validation"].get("fullset")
                if full is not None:
                    ax.axhline(
                        full, color="gray", linestyle="-.", linewidth=1, label=f"fullset seed {c['seed']}"
                    )
            ax.set_title(f"{task_label(task)} {LABELS[method]}")
            ax.set_xlabel("lambda (1 = s0, 0 = s1)")
            ax.set_ylabel(f"{mcells[0]['metric']} (validation)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()
        path = save_png(fig, out / f"{prefix}_{task}.png")
        written.append(path)
    return written


def _check(results: Mapping[str, Any]) -> None:
    if "cells" not in results:
        raise PemarithError("not a results file of this scenario (no cells)")
