"""Skewed subsets (Appendix B): sizes, the 80/20 rule, determinism, the STS-B threshold."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pemarith.errors import PemarithError
from pemarith.hf.skew import class_counts, skewed_split, skewed_subsets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(counts: dict[int, int]) -> list[dict]:
    rows = [
        {"text_a": f"{c}-{i}", "text_b": None, "label": c}
        for c, n in counts.items()
        for i in range(n)
    ]
    random.Random(0).shuffle(rows)
    return rows


def _ids(rows):
    return [r["text_a"] for r in rows]


def test_whole_subsets_follow_the_80_20_rule():
    rows = _rows({0: 1000, 1: 1000})
    sp = skewed_split(rows, seed=3, size=None)
    sel = sp.selected
    assert sel in (0, 1)
    n0 = sum(r["label"] == sel for r in sp.s0)
    n1 = sum(r["label"] == sel for r in sp.s1)
    assert (n0, n1) == (800, 200)  # 80% of the selected label to s0, 20% to s1
    assert len(sp.s0) == len(sp.s1) == 1000  # the others fill up to equal sizes
    assert sorted(_ids(sp.s0 + sp.s1)) == sorted(_ids(rows))  # a partition


def test_three_classes_equal_sizes():
    rows = _rows({0: 600, 1: 600, 2: 600})
    sp = skewed_split(rows, seed=0, size=None)
    assert len(sp.s0) == len(sp.s1) == 900
    table = sp.table()
    assert table["s0"][sp.selected] == 480 and table["s1"][sp.selected] == 120
    assert set(table["s0"]) == {0, 1, 2}


def test_sampled_sizes_and_proportions():
    rows = _rows({0: 3000, 1: 3000})
    s0, s1 = skewed_subsets(rows, seed=1, size=1000)
    assert len(s0) == len(s1) == 1000
    assert not set(_ids(s0)) & set(_ids(s1))
    sel = skewed_split(rows, seed=1).selected
    # Expected 800/1000 of s0 and 200/1000 of s1 are the selected class (sampling noise).
    assert 740 < sum(r["label"] == sel for r in s0) < 860
    assert 140 < sum(r["label"] == sel for r in s1) < 260


def test_deterministic_by_seed():
    rows = _rows({0: 1500, 1: 1200, 2: 900})
    a = skewed_subsets(rows, seed=7)
    b = skewed_subsets(rows, seed=7)
    assert (_ids(a[0]), _ids(a[1])) == (_ids(b[0]), _ids(b[1]))
    c = skewed_subsets(rows, seed=8)
    assert _ids(a[0]) != _ids(c[0])
    selected = {skewed_split(rows, seed=s).selected for s in range(30)}
    assert selected == {0, 1, 2}  # the selected label is random


def test_regression_threshold_selects_above():
    rng = random.Random(0)
    rows = [{"text_a": str(i), "text_b": "b", "label": rng.uniform(0, 5)} for i in range(4000)]
    rows.append({"text_a": "edge", "text_b": "b", "label": 2.5})  # not above: class 0
    sp = skewed_split(rows, seed=0, size=None)
    assert sp.selected == 1
    above = sum(r["label"] > 2.5 for r in rows)
    assert sum(r["label"] > 2.5 for r in sp.s0) == round(0.8 * above)
    assert class_counts([rows[-1]]) == {0: 1}
    assert class_counts([rows[-1]], threshold=2.0) == {1: 1}
    assert abs(len(sp.s0) - len(sp.s1)) <= 1


def test_selected_majority_class_clips():
    # 80% of a large majority exceeds half the rows: s0 is then all selected, s1 the rest.
    rows = _rows({0: 200, 1: 800})
    sp = next(skewed_split(rows, s, size=None) for s in range(50) if
              skewed_split(rows, s, size=None).selected == 1)
    assert class_counts(sp.s0) == {1: 640}
    assert class_counts(sp.s1) == {0: 200, 1: 160}


def test_errors():
    with pytest.raises(PemarithError, match="fewer than size=1000"):
        skewed_subsets(_rows({0: 500, 1: 500}), seed=0)
    with pytest.raises(PemarithError, match="at least two classes"):
        skewed_subsets(_rows({0: 50}), seed=0, size=None)
    with pytest.raises(PemarithError, match="labelled rows"):
        skewed_subsets([{"text_a": "x", "text_b": None, "label": None}] * 4, seed=0, size=None)


@pytest.mark.skipif(not DATA.is_dir(), reason="no shared data")
def test_table9_shape_on_rte():
    from pemarith.hf.data import load_split

    sp = skewed_split(load_split("rte", "train", DATA), seed=0)
    table = sp.table()
    assert sum(table["s0"].values()) == sum(table["s1"].values()) == 1000
    # RTE is balanced: about 80% of s0 and 20% of s1 are the selected class (Table 9: 793/198).
    assert 750 < table["s0"][sp.selected] < 840 and 160 < table["s1"][sp.selected] < 250
    assert sp.format_table().startswith("s0  class 0: ")
