"""Paired significance tests for comparing two classifiers on the same test rows.

The paper marks a merge "significantly different (p < 0.05) from the corresponding source" with
``*`` (Table 5) without naming its test. For two classifiers scored on the same rows the
standard paired test is McNemar's: only the discordant rows count,

    b = #(first right, second wrong),   c = #(first wrong, second right),   n = b + c,

and under the null hypothesis (equal accuracy) ``b ~ Binomial(n, 1/2)``. The exact two-sided
p-value is ``min(1, 2 * sum_{i <= min(b, c)} C(n, i) / 2^n)`` (1 when ``n == 0``). Pure Python:
no torch, no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import PemarithError


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test of two classifiers' per-row correctness (same rows, same order).

    Returns ``{"b", "c", "n", "p"}`` (see the module docstring for the formula).
    """
    if len(first) != len(second):
        raise PemarithError(f"mcnemar_exact: {len(first)} vs {len(second)} rows; "
                            "both classifiers must be scored on the same rows")
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "n": 0, "p": 1.0}
    k = min(b, c)
    # exact integer arithmetic: the tail probability of a fair binomial
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p = min(1.0, 2 * tail / 2 ** n)
    return {"b": b, "c": c, "n": n, "p": p}
