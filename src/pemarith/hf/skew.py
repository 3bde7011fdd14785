"""Two training subsets with different label distributions (the paper's Appendix B).

"We split the datasets by randomly selecting one label and assigning 80% of the label's samples
to one subset, and putting the remaining 20% in the other [...]. For regression task STS-B [...]
samples with values above 2.5 are considered as the selected label. After that, we randomly
distribute samples from the remaining labels to the two subsets to make the number of samples
in the subsets equal. [...] we randomly select 1000 samples from each split."

So with ``n_sel`` rows of the selected class and ``n_rest`` of the others, ``s0`` receives
``round(0.8 * n_sel)`` selected rows and ``x`` others, ``s1`` the rest, where
``x = (n_sel + n_rest) // 2 - round(0.8 * n_sel)`` makes the sizes equal (clipped to
``[0, n_rest]``). Each subset is then sampled down to ``size`` rows. The paper's Table 9 is
these subsets' class counts (:func:`class_counts`).

Equal sizes need ``round(0.8 * n_sel) <= N // 2`` (``N = n_sel + n_rest``), i.e. a selected
share ``p <= 0.625``; the sampled subsets then hold about ``1.6 p`` and ``0.4 p`` of the selected
class and keep the task's natural ratio over both, which is what Table 9 shows for every task but
STS-B (MRPC ``p = 0.325``: 0.52 and 0.13 against the paper's 524 and 131 of 1000). A majority
class past 0.625 would leave ``s0`` with that class alone, so the random draw is only among the
*feasible* classes (:func:`feasible_classes`), and any subset with a single class, or a class
below ``MIN_CLASS_SHARE`` of it, is an error rather than a module trained on it (Table 9's own
smallest share is about 12%).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pemarith.errors import PemarithError

Row = dict[str, Any]

#: Fraction of the selected class's rows that go to ``s0``.
SELECTED_SHARE = 0.8
#: Below this share of a subset, a class counts as missing (the subset is degenerate).
MIN_CLASS_SHARE = 0.05


def skew_class(label: Any, threshold: float = 2.5) -> int:
    """The class used for skewing: the label itself, or for a float label ``int(label > t)``."""
    if label is None:
        raise PemarithError("skewed subsets need labelled rows (got label None)")
    if isinstance(label, float):
        return int(label > threshold)
    return int(label)


def class_counts(rows: Sequence[Row], threshold: float = 2.5) -> dict[int, int]:
    """Rows per class (float labels binarised at ``threshold``), classes in ascending order."""
    counts: dict[int, int] = {}
    for row in rows:
        c = skew_class(row["label"], threshold)
        counts[c] = counts.get(c, 0) + 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class SkewedSplit:
    """The two subsets, the selected class, and each subset's class counts (Table 9)."""

    s0: list[Row]
    s1: list[Row]
    selected: int
    seed: int
    threshold: float

    def table(self) -> dict[str, dict[int, int]]:
        """``{"s0": {class: count}, "s1": {...}}`` like the paper's Table 9 (zeros included)."""
        c0 = class_counts(self.s0, self.threshold)
        c1 = class_counts(self.s1, self.threshold)
        classes = sorted(set(c0) | set(c1))
        return {
            "s0": {c: c0.get(c, 0) for c in classes},
            "s1": {c: c1.get(c, 0) for c in classes},
        }

    def format_table(self) -> str:
        """Table 9 as text: one line per subset, ``s0  class 0: 793  class 1: 207``."""
        lines = []
        for name, counts in self.table().items():
            cells = "  ".join(f"class {c}: {n}" for c, n in counts.items())
            lines.append(f"{name}  {cells}")
        return "\n".join(lines)


def _feasible(counts: dict[int, int]) -> list[int]:
    total = sum(counts.values())
    return [c for c, n in counts.items() if round(SELECTED_SHARE * n) <= total // 2]


def _shares(counts: dict[int, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"class {c}: {n / total:.1%}" for c, n in counts.items())


def feasible_classes(rows: Sequence[Row], threshold: float = 2.5) -> list[int]:
    """The classes that can be selected: ``round(0.8 n_c) <= N // 2`` (equal subsets possible)."""
    return _feasible(class_counts(rows, threshold))


def check_subset(rows: Sequence[Row], classes: Sequence[int], name: str, threshold: float = 2.5) -> None:
    """Refuse a degenerate subset: a class of the task missing or below ``MIN_CLASS_SHARE``."""
    counts = class_counts(rows, threshold)
    low = [c for c in classes if counts.get(c, 0) < MIN_CLASS_SHARE * max(1, len(rows))]
    if low:
        have = ", ".join(f"class {c}: {counts.get(c, 0)}" for c in classes)
        raise PemarithError(
            f"skewed subset {name} is degenerate ({have} of {len(rows)}; each class needs "
            f"{MIN_CLASS_SHARE:.0%}): a module trained on it would learn one class"
        )


def skewed_split(
    rows: Sequence[Row],
    seed: int,
    size: int | None = 1000,
    threshold: float = 2.5,
    selected: int | None = None,
) -> SkewedSplit:
    """Split ``rows`` into two skewed subsets as in Appendix B (see the module docstring).

    The selected class is ``selected`` when given, else drawn at random among the feasible
    classes (:func:`feasible_classes`; for float labels it is always the class
    ``label > threshold``). ``size`` rows are then sampled from each subset (None keeps them
    whole). The same ``rows`` and ``seed`` give the same subsets. A subset with a class below
    ``MIN_CLASS_SHARE`` is an error (:func:`check_subset`).
    """
    if not rows:
        raise PemarithError("skewed subsets need rows, got none")
    rng = random.Random(seed)
    regression = isinstance(rows[0]["label"], float)
    by_class: dict[int, list[Row]] = {}
    for row in rows:
        by_class.setdefault(skew_class(row["label"], threshold), []).append(row)
    classes = sorted(by_class)
    if len(classes) < 2:
        raise PemarithError(f"skewed subsets need at least two classes, got {classes}")
    counts = {c: len(by_class[c]) for c in classes}
    if selected is not None:
        if selected not in by_class:
            raise PemarithError(f"selected class {selected} is not a class of these rows ({_shares(counts)})")
    elif regression:
        selected = 1
    else:
        feasible = _feasible(counts)
        if not feasible:
            raise PemarithError(
                f"no class can take 80% of its rows into one of two equal subsets "
                f"(a share of at most 62.5% is needed; {_shares(counts)})"
            )
        selected = rng.choice(feasible)

    chosen = list(by_class[selected])
    rest = [row for c in classes if c != selected for row in by_class[c]]
    rng.shuffle(chosen)
    rng.shuffle(rest)
    k = round(SELECTED_SHARE * len(chosen))
    x = min(max((len(chosen) + len(rest)) // 2 - k, 0), len(rest))
    s0 = chosen[:k] + rest[:x]
    s1 = chosen[k:] + rest[x:]

    if size is not None:
        small = min(len(s0), len(s1))
        if size > small:
            raise PemarithError(
                f"a skewed subset has only {small} rows, fewer than size={size}; "
                "pass a smaller size (or None to keep all)"
            )
        s0 = rng.sample(s0, size)
        s1 = rng.sample(s1, size)
    else:
        rng.shuffle(s0)
        rng.shuffle(s1)
    for name, subset in (("s0", s0), ("s1", s1)):
        try:
            check_subset(subset, classes, name, threshold)
        except PemarithError as e:
            raise PemarithError(
                f"{e}; class {selected} was selected ({_shares(counts)}): select a class "
                f"with a share of at most 62.5%"
            ) from None
    return SkewedSplit(s0, s1, selected, seed, threshold)


def skewed_subsets(
    rows: Sequence[Row], seed: int, size: int | None = 1000, threshold: float = 2.5
) -> tuple[list[Row], list[Row]]:
    """``(s0, s1)`` of :func:`skewed_split`; use that for the selected class and Table 9."""
    split = skewed_split(rows, seed, size, threshold)
    return split.s0, split.s1
