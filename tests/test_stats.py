"""Bootstrap intervals of differences of means (issue 22, item 4), and the report tables that
print them for sampled generations (4.4) and answers to the same instructions (4.6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pemarith.errors import PemarithError
from pemarith.hf.stats import bootstrap_difference, format_difference

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results" / "data"


def test_unpaired_interval_covers_the_difference_with_the_normal_width():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.3, 1.0, 2000), rng.normal(0.0, 1.0, 2000)
    r = bootstrap_difference(x, y, paired=False)
    assert r["difference"] == pytest.approx(x.mean() - y.mean())
    assert r["low"] < 0.3 < r["high"]
    width = 2 * 1.96 * (x.var(ddof=1) / 2000 + y.var(ddof=1) / 2000) ** 0.5
    assert r["high"] - r["low"] == pytest.approx(width, rel=0.1)
    assert bootstrap_difference(x, y, paired=False) == r  # seeded: reproducible


def test_pairing_removes_the_items_own_spread():
    rng = np.random.default_rng(4)
    items = rng.normal(0.0, 5.0, 300)
    x, y = items + 0.1 + rng.normal(0, 0.05, 300), items
    paired = bootstrap_difference(x, y, paired=True)
    unpaired = bootstrap_difference(x, y, paired=False)
    assert paired["low"] < 0.1 < paired["high"] and paired["low"] > 0
    assert (paired["high"] - paired["low"]) * 20 < unpaired["high"] - unpaired["low"]
    same = bootstrap_difference(y + 0.5, y, paired=True)
    assert same["low"] == pytest.approx(0.5) and same["high"] == pytest.approx(0.5)


def test_shares_and_errors():
    r = bootstrap_difference([1.0] * 6 + [0.0] * 994, [1.0] * 1 + [0.0] * 999, paired=False)
    assert r["difference"] == pytest.approx(0.005) and r["low"] <= 0.0 < r["high"]
    assert format_difference(r, 100, 1).startswith("+0.5 [")
    assert format_difference(None) == "-"
    with pytest.raises(PemarithError, match="same items"):
        bootstrap_difference([1, 2, 3], [1, 2], paired=True)
    with pytest.raises(PemarithError, match="at least 2"):
        bootstrap_difference([1], [1, 2], paired=False)


@pytest.mark.parametrize("stem", ["unlearning", "detox-instruct"])
def test_the_published_pages_give_intervals(stem):
    from pemarith.scenarios import get_scenario

    results = json.loads((DOCS / f"{stem}.json").read_text())
    text = get_scenario(stem).sections(results)["differences"]
    rows = [
        line for line in text.splitlines() if line.startswith("| ") and " [" in line and "CI]" not in line
    ]
    assert rows, text
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        lo, hi = (float(v) for v in cells[-1].split("[")[1].rstrip("]").split(","))
        d = float(cells[-1].split("[")[0])
        assert lo <= d <= hi


def test_unlearning_uses_per_sample_scores_when_stored():
    from pemarith.scenarios import get_scenario

    results = json.loads((DOCS / "unlearning.json").read_text())
    rng = np.random.default_rng(0)
    for c in results["cells"]:
        for m in c["rows"].values():
            m["scores"] = [float(v) for v in rng.uniform(0, 1, 50)]
    text = get_scenario("unlearning").sections(results)["differences"]
    assert "| 50 / 50 |" in text and "predates" not in text and "| - |" not in text
