"""Markdown from results: number formatting, tables, and the generated blocks of the docs.

The docs pages under ``docs/results/`` hold hand-written prose and generated blocks between
``<!-- BEGIN GENERATED: NAME -->`` and ``<!-- END GENERATED: NAME -->``. The blocks are the
rendering of the committed results file ``docs/results/data/<name>.json``
(:func:`update_blocks`); a test re-renders them, so the numbers in the docs cannot drift from
the results.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Metrics printed as percentages (the paper's convention); the others as fractions.
PERCENT = {"accuracy", "f1", "f1_macro", "f1_accuracy", "mean"}
LABELS = {"lora": "LoRA", "ia3": "(IA)3", "full": "FFT"}
TASK_LABELS = {
    "sst2": "SST-2",
    "cola": "CoLA",
    "stsb": "STS-B",
    "rte": "RTE",
    "qnli": "QNLI",
    "mnli": "MNLI",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "wnli": "WNLI",
}
METRIC_LABELS = {"accuracy": "acc", "matthews_corr": "MCC", "spearman": "Spearman"}


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def class_shares(labels: Sequence[int]) -> list[float]:
    """Each class's share of ``labels`` (the evaluated rows), for :func:`one_class`."""
    n = len(labels)
    return [labels.count(k) / n for k in sorted(set(labels))] if n else []


def one_class(scores: Mapping[str, float | None], shares: Sequence[float] = ()) -> bool:
    """Whether scores are those of a classifier that predicts one class on the evaluated rows.

    A constant prediction gives ``MCC = 0`` (sklearn's value when a column of the confusion
    matrix is empty), ``F1 = 0`` (all negative), or, all positive, ``F1 = 2p / (1 + p)`` with
    ``p`` the positive share, which is then the accuracy: ``F1 = 2 acc / (1 + acc)``. Accuracy
    alone cannot tell (a one-class accuracy is the class share): there, the count of distinct
    predicted classes that evaluation records (``classes_predicted``) decides.

    With ``shares`` (each class's share of the evaluated rows, :func:`class_shares`), an accuracy
    equal to one of them counts too: it is what a one-class module scores (a real classifier
    lands there exactly only by chance), which flags scores stored without the count.
    """
    if scores.get("classes_predicted") == 1:
        return True
    acc0 = scores.get("accuracy")
    if (
        acc0 is not None
        and scores.get("classes_predicted") is None
        and any(abs(acc0 - s) < 1e-9 for s in shares)
    ):
        return True
    mcc, f1, acc = (scores.get(k) for k in ("matthews_corr", "f1", "accuracy"))
    if mcc is not None and mcc == 0.0:
        return True
    if f1 is not None and f1 == 0.0:
        return True
    return f1 is not None and acc is not None and abs(f1 - 2 * acc / (1 + acc)) < 1e-9


def scale(metric: str, value: float) -> float:
    """A score in the paper's units: accuracy in percent, correlations as they are."""
    return value * 100 if metric.rsplit(".", 1)[-1] in PERCENT else value


def _digits(metric: str) -> int:
    return 1 if metric.rsplit(".", 1)[-1] in PERCENT else 3


def fmt(metric: str, values: Sequence[float] | float | None, signed: bool = False, extra: int = 0) -> str:
    """``72.3`` for one value, ``72.3 ± 1.2`` (mean ± sample std) for several; ``-`` for none.

    ``extra`` adds decimals (Table 7's differences are printed with two).
    """
    if values is None:
        return "-"
    if isinstance(values, (int, float)):
        values = [float(values)]
    vals = [scale(metric, v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-" if not values else "nan"
    d = _digits(metric) + extra
    sign = "+" if signed else ""
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:{sign}.{d}f}"
    return f"{mean:{sign}.{d}f} ± {statistics.stdev(vals):.{d}f}"


def fmt_paper(metric: str, value: float | None, signed: bool = False, extra: int = 0) -> str:
    """A number copied from the paper (already in display units)."""
    if value is None:
        return "-"
    d = (1 if metric.rsplit(".", 1)[-1] in PERCENT else 2) + extra
    return f"{value:{'+' if signed else ''}.{d}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` is one character per column (``l`` or ``r``; default l, r...)."""
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def seconds(s: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def group(cells: Iterable[Mapping[str, Any]], *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
    """Cells grouped by the values of ``keys`` (in first-seen order)."""
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in cells:
        out.setdefault(tuple(c.get(k) for k in keys), []).append(c)
    return out


_BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)"
    r"(<!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of a docs page, ``{name: body}``."""
    return {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}


def update_blocks(text: str, bodies: Mapping[str, str]) -> str:
    """``text`` with each generated block whose name is in ``bodies`` replaced."""

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in bodies:
            return m.group(0)
        body = bodies[name].rstrip("\n") + "\n"
        return f"{m.group(1)}{body}{m.group(4)}"

    return _BLOCK.sub(sub, text)


def render_sections(sections: Mapping[str, str], title: str) -> str:
    """A standalone report: the title, then each section under its name."""
    parts = [f"# {title}\n"]
    for name, body in sections.items():
        parts.append(f"<!-- BEGIN GENERATED: {name} -->\n{body.rstrip()}\n<!-- END GENERATED: {name} -->\n")
    return "\n".join(parts)
