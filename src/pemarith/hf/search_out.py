"""What ``pemarith search`` writes: ``trials.csv``, ``results.json`` and two figures.

- ``trials.csv``: one row per trial (no reference rows): ``trial``, every variable, every metric
  of the validation split, ``objective`` (the metric with the ``--l1`` penalty) and ``seconds``
  (the evaluation's time, as recorded when it was computed).
- ``results.json``: ``best`` (``params``, ``objective``, and the best trial's metrics on the
  ``validation`` and ``test`` splits), ``trials``, ``engine``, ``sampler``, ``seed`` and the
  search's settings.
- ``search_history.png``: the objective of each trial and the best so far (optimisation history);
  ``search_vars.png``: the objective against each variable, one panel each, the best marked.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

from ..fs import write_file
from .sweep_out import json_default


def write_outputs(config: Any, result: Any) -> dict[str, str]:
    out = Path(config.out).expanduser()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", *result.names, *result.columns, "objective", "seconds"])
    for t in result.trials:
        writer.writerow(
            [
                t.number,
                *(format(t.params[n], ".10g") for n in result.names),
                *(format(t.scores[c], ".10g") if c in t.scores else "" for c in result.columns),
                format(t.objective, ".10g"),
                format(t.seconds, ".4f"),
            ]
        )
    files = {"csv": str(write_file(out / "trials.csv", buf.getvalue())), "json": str(out / "results.json")}
    if config.plot:
        files.update(plot_search(out, result))
    best = result.best
    summary = {
        "expr": config.expr,
        "model": config.model,
        "tasks": list(config.tasks),
        "modules": dict(config.modules),
        "mode": config.mode,
        "rank": config.rank,
        "merge": dataclasses.asdict(config.merge),
        "variables": {v.name: {"lo": v.lo, "hi": v.hi, "step": v.step} for v in config.variables},
        "engine": result.engine,
        "sampler": config.sampler,
        "seed": config.seed,
        "budget": config.budget,
        "objective": {"metric": result.metric, "direction": result.direction, "l1": config.l1},
        "best": {
            "trial": best.number,
            "params": dict(best.params),
            "objective": best.objective,
            config.val_split: dict(best.scores),
            **({config.test_split: result.test} if config.test_split else {}),
        },
        "trials": [
            {
                "trial": t.number,
                "params": t.params,
                "scores": t.scores,
                "objective": t.objective,
                "seconds": t.seconds,
            }
            for t in result.trials
        ],
        "evaluations": result.evaluations,
        "reused_from_records": result.reused,
        "seconds": result.seconds,
        "notes": result.notes,
        "files": files,
    }
    if config.val_split != "validation":
        summary["best"]["validation"] = dict(best.scores)
    write_file(out / "results.json", json.dumps(summary, indent=2, default=json_default) + "\n")
    return files


def plot_search(out: Path, result: Any) -> dict[str, str]:
    """The two figures (see the module docstring); returns ``{"history": path, "vars": path}``."""
    from .plot import pyplot, save_png

    plt = pyplot()
    sign = -1.0 if result.direction == "minimize" else 1.0
    xs = [t.number for t in result.trials]
    ys = [t.objective for t in result.trials]
    running, best = [], -math.inf
    for y in ys:
        best = max(best, sign * y)
        running.append(sign * best)
    fig, ax = plt.subplots(figsize=(6, 3.9))
    ax.plot(xs, ys, "o", markersize=3, color="gray", label="trial")
    ax.plot(xs, running, "-", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"objective ({result.metric}, {result.direction[:3]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    history = save_png(fig, out / "search_history.png", dpi=110)

    n = len(result.names)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, name in zip(axes[0], result.names):
        ax.plot([t.params[name] for t in result.trials], ys, "o", markersize=3, color="gray")
        ax.plot(
            [result.best.params[name]],
            [result.best.objective],
            "*",
            markersize=10,
            color="red",
            label=f"best {name} = {result.best.params[name]:.4g}",
        )
        ax.set_xlabel(name)
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    per_var = save_png(fig, out / "search_vars.png", dpi=110)
    return {"history": str(history), "vars": str(per_var)}
