"""A sweep's result files: ``results.csv`` (one row per validation value), ``results.json`` and
``sweep.png`` (:func:`write_results`)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fs import write_file

if TYPE_CHECKING:
    from .sweep import SweepConfig, SweepResult


def write_results(config: SweepConfig, result: SweepResult, normal_form: str) -> dict[str, str]:
    """``results.csv`` (one row per validation value), ``results.json``, ``sweep.png``."""
    import csv
    import io

    out = Path(config.out).expanduser()
    keys = list(dict.fromkeys(k for _, s in result.validation for k in s))
    keys = [*result.columns, *(k for k in keys if k not in result.columns)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([config.var, *keys, "selected"])
    for value, scores in result.validation:
        writer.writerow(
            [
                format(value, "g"),
                *(format(scores[k], ".6g") if k in scores else "" for k in keys),
                int(value == result.pick),
            ]
        )
    files = {"csv": str(out / "results.csv"), "json": str(out / "results.json")}
    write_file(out / "results.csv", buf.getvalue())
    if config.plot:
        from .plot import plot_sweep

        refs = {f"module {n}": s for n, s in result.modules.items()}
        if config.val_split in result.base:
            refs["base model"] = result.base[config.val_split]
        files["plot"] = str(
            plot_sweep(
                out / "sweep.png",
                config.var,
                result.validation,
                result.columns,
                refs,
                result.pick,
                title=f"{config.expr} on {', '.join(config.tasks)} ({config.val_split})",
            )
        )
    summary = {
        "expr": config.expr,
        "var": config.var,
        "model": config.model,
        "tasks": list(config.tasks),
        "modules": dict(config.modules),
        "mode": config.mode,
        "rank": config.rank,
        "merge": dataclasses.asdict(config.merge),
        "select": config.select,
        "search": config.search,
        "grid": config.grid,
        "metrics": result.columns,
        "pick": {
            config.var: result.pick,
            "normal_form": normal_form,
            config.val_split: dict(next(s for v, s in result.validation if v == result.pick)),
            **({config.test_split: result.test} if config.test_split else {}),
        },
        "base": result.base,
        "modules_alone": result.modules,
        "validation": [{config.var: v, **s} for v, s in result.validation],
        "evaluations": result.evaluations,
        "grid_size": result.grid_size,
        "reused_from_cache": result.reused,
        "seconds": result.seconds,
        "notes": result.notes,
        "files": files,
    }
    write_file(out / "results.json", json.dumps(summary, indent=2, default=json_default) + "\n")
    return files


def json_default(obj: Any) -> Any:
    """JSON for what json cannot write: NaN and infinities as null, anything else as its text."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
