"""Two training subsets with different label distributions (the paper's Appendix B).

"We split the datasets by randomly selecting one label and assigning 80% of the label's samples
to one subset, and putting the remaining 20% in the other [...]. For regression task STS-B [...]
samples with values above 2.5 are considered as the selected label. After that, we randomly
distribute samples from the remaining labels to the two subsets to make the number of samples
in the subsets equal. [...] we randomly select 1000 samples from each split."

So with ``n_sel`` rows of the selected class and ``n_rest`` of the others, ``s0`` receives
``round(0.8 * n_sel)`` selected rows and ``x`` others, ``s1`` the rest, where
``x = (n_sel + n_rest) // 2 - round(0.8 * n_sel)`` makes the sizes equal (clipped to
``[0, n_rest]`` when the selected class is so large that equal sizes are impossible; then
``s0`` is the larger one). Each subset is then sampled down to ``size`` rows. The paper's
Table 9 is these subsets' class counts (:func:`class_counts`).
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


def skewed_split(
    rows: Sequence[Row],
    seed: int,
    size: int | None = 1000,
    threshold: float = 2.5,
) -> SkewedSplit:
    """Split ``rows`` into two skewed subsets as in Appendix B (see the module docstring).

    The selected class is drawn at random from the classes present (for float labels it is
    always the class ``label > threshold``). ``size`` rows are then sampled from each subset
    (None keeps them whole). The same ``rows`` and ``seed`` give the same subsets.
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
    selected = 1 if regression else rng.choice(classes)

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
    return SkewedSplit(s0, s1, selected, seed, threshold)


def skewed_subsets(
    rows: Sequence[Row], seed: int, size: int | None = 1000, threshold: float = 2.5
) -> tuple[list[Row], list[Row]]:
    """``(s0, s1)`` of :func:`skewed_split`; use that for the selected class and Table 9."""
    split = skewed_split(rows, seed, size, threshold)
    return split.s0, split.s1
