"""The sweep figure: each tracked metric against lambda, with reference lines.

Like the paper's Figures 2 and 5-7: the composition's validation score at every evaluated value
of the variable (a line with markers), the individual modules' and the base model's scores as
horizontal dashed lines, and the selected value as a vertical dotted line. One panel per metric,
side by side (toxicity and perplexity, or MNLI and RTE accuracy).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..fs import write_with


def plot_sweep(
    path: str | os.PathLike[str],
    var: str,
    points: Sequence[tuple[float, Mapping[str, float]]],
    metrics: Sequence[str],
    refs: Mapping[str, Mapping[str, float]] | None = None,
    pick: float | None = None,
    title: str = "",
) -> Path:
    """Write a PNG of ``metrics`` against ``var`` to ``path`` (atomically); return the path.

    ``points`` are ``(value, scores)``; ``refs`` maps a label (``"module a"``, ``"base model"``)
    to scores drawn as horizontal lines where they hold the metric.
    """
    plt = pyplot()
    path = Path(path)
    metrics = list(metrics) or sorted({k for _, s in points for k in s})[:1]
    points = sorted(points, key=lambda p: p[0])
    n = max(len(metrics), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.9), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        xs = [v for v, s in points if _finite(s.get(metric))]
        ys = [s[metric] for v, s in points if _finite(s.get(metric))]
        ax.plot(xs, ys, marker="o", markersize=3, color="black", label="composition")
        for i, (label, scores) in enumerate((refs or {}).items()):
            if _finite(scores.get(metric)):
                ax.axhline(
                    scores[metric], linestyle="--", linewidth=1.2, color=colors[i % len(colors)], label=label
                )
        if pick is not None:
            ax.axvline(pick, linestyle=":", color="gray", label=f"{var} = {pick:g} (selected)")
        ax.set_xlabel(f"{var} (lambda)" if var != "lambda" else var)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed; safe if already imported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary file, then a rename) and close it."""
    try:
        write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)
    return path


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
