"""Paired significance tests for comparing two classifiers on the same test rows.

The paper marks a merge "significantly different (p < 0.05) from the corresponding source" with
``*`` (Table 5) without naming its test. For two classifiers scored on the same rows the
standard paired test is McNemar's: only the discordant rows count,

    b = #(first right, second wrong),   c = #(first wrong, second right),   n = b + c,

and under the null hypothesis (equal accuracy) ``b ~ Binomial(n, 1/2)``. The exact two-sided
p-value is ``min(1, 2 * sum_{i <= min(b, c)} C(n, i) / 2^n)`` (1 when ``n == 0``). Pure Python:
no torch, no scipy.

For scores sampled per item (the toxicity of each generation), a difference of means
``mean(x) - mean(y)`` (a share is the mean of an indicator) gets a percentile bootstrap 95%
interval, :func:`bootstrap_difference`, with SciPy's ``scipy.stats.bootstrap``: the items resampled
jointly when the two are scored on the same items (``paired``), each sample on its own otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import PemarithError


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test of two classifiers' per-row correctness (same rows, same order).

    Returns ``{"b", "c", "n", "p"}`` (see the module docstring for the formula).
    """
    if len(first) != len(second):
        raise PemarithError(
            f"mcnemar_exact: {len(first)} vs {len(second)} rows; "
            "both classifiers must be scored on the same rows"
        )
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "n": 0, "p": 1.0}
    k = min(b, c)
    # exact integer arithmetic: the tail probability of a fair binomial
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p = min(1.0, 2 * tail / 2**n)
    return {"b": b, "c": c, "n": n, "p": p}


def bootstrap_difference(
    first: Sequence[float],
    second: Sequence[float],
    paired: bool,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, Any]:
    """``mean(first) - mean(second)`` with a percentile bootstrap interval (seeded, reproducible).

    Returns ``{"difference", "low", "high", "n": (len(first), len(second)), "paired"}``. With
    ``paired`` both must be scored on the same items in the same order. A difference with no
    spread (all values equal in both) has the interval ``[d, d]``.
    """
    import numpy as np
    from scipy import stats

    x, y = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        raise PemarithError(f"bootstrap_difference: need at least 2 values each, got {x.size} and {y.size}")
    if paired and x.size != y.size:
        raise PemarithError(
            f"bootstrap_difference: {x.size} vs {y.size} values; paired samples "
            "must be scored on the same items"
        )
    d = float(x.mean() - y.mean())
    if np.ptp(x) == 0 and np.ptp(y) == 0 or paired and np.ptp(x - y) == 0:
        low = high = d
    else:
        res = stats.bootstrap(
            (x, y),
            lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis),
            paired=paired,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"difference": d, "low": low, "high": high, "n": (int(x.size), int(y.size)), "paired": paired}


def format_difference(r: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    """``+0.012 [-0.004, +0.029]`` (times ``scale``); ``-`` for None."""
    if r is None:
        return "-"
    d, lo, hi = (scale * r[k] for k in ("difference", "low", "high"))
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
