"""Skewed subsets (Appendix B): sizes, the 80/20 rule, determinism, the STS-B threshold."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pemarith.errors import PemarithError
from pemarith.hf.skew import class_counts, feasible_classes, skewed_split, skewed_subsets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(counts: dict[int, int]) -> list[dict]:
    rows = [{"text_a": f"{c}-{i}", "text_b": None, "label": c} for c, n in counts.items() for i in range(n)]
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


def test_a_majority_class_past_62_5_percent_is_never_drawn():
    # 80% of a class of 80% exceeds half the rows: s0 would hold that class alone.
    rows = _rows({0: 200, 1: 800})
    assert feasible_classes(rows) == [0]
    assert {skewed_split(rows, s, size=None).selected for s in range(40)} == {0}


def test_a_pinned_infeasible_class_is_a_degenerate_subset_error():
    rows = _rows({0: 200, 1: 800})
    with pytest.raises(
        PemarithError,
        match=r"s0 is degenerate \(class 0: 0, class 1: 640 of 640.*"
        r"class 1 was selected \(class 0: 20.0%, class 1: 80.0%\)",
    ):
        skewed_split(rows, 0, size=None, selected=1)
    with pytest.raises(PemarithError, match="not a class of these rows"):
        skewed_split(rows, 0, size=None, selected=2)


def test_a_class_too_rare_for_both_subsets_is_an_error():
    # Class 1 (2.8%) is the only feasible one, but 20% of it is under 5% of s1, and 80% of it
    # under 5% of s0: no subset pair of this task is worth training on.
    rows = _rows({0: 700, 1: 20})
    assert feasible_classes(rows) == [1]
    with pytest.raises(
        PemarithError, match=r"degenerate .*class 1 was selected \(class 0: 97.2%, class 1: 2.8%\)"
    ):
        skewed_split(rows, 0, size=None)


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


# Train-set class counts (GLUE label order; the large sets scaled down, ratios kept), the class
# the paper's draw selected (read off Table 9), and Table 9 itself: s0's and s1's class counts.
GLUE_TRAIN = {
    "mrpc": ({0: 1194, 1: 2474}, 0, {0: 524, 1: 476}, {0: 131, 1: 869}),
    "qqp": ({0: 22947, 1: 13438}, 1, {0: 388, 1: 612}, {0: 874, 1: 126}),
    "sst2": ({0: 29780, 1: 37569}, 0, {0: 691, 1: 309}, {0: 178, 1: 822}),
    "cola": ({0: 2528, 1: 6023}, 0, {0: 483, 1: 517}, {0: 118, 1: 882}),
    "rte": ({0: 1249, 1: 1241}, 0, {0: 793, 1: 207}, {0: 198, 1: 802}),
    "qnli": ({0: 5237, 1: 5238}, 0, {0: 790, 1: 210}, {0: 187, 1: 813}),
    "mnli": ({0: 13090, 1: 13090, 2: 13090}, 0, {0: 536, 1: 226, 2: 238}, {0: 128, 1: 443, 2: 429}),
}


@pytest.mark.parametrize("task", sorted(GLUE_TRAIN))
def test_the_papers_class_pinned_gives_table_9_within_sampling_noise(task):
    counts, selected, s0, s1 = GLUE_TRAIN[task]
    sp = skewed_split(_rows(counts), seed=0, size=1000, selected=selected)
    got = sp.table()
    for name, paper in (("s0", s0), ("s1", s1)):
        for c, n in paper.items():
            p = n / 1000
            noise = 4 * (2 * 1000 * p * (1 - p)) ** 0.5  # two independent draws of 1000
            assert abs(got[name][c] - n) <= noise, (task, name, c, got[name][c], n)


@pytest.mark.parametrize("task", sorted(GLUE_TRAIN))
def test_a_drawn_class_never_gives_a_degenerate_subset(task):
    counts = GLUE_TRAIN[task][0]
    rows = _rows(counts)
    total = sum(counts.values())
    for seed in range(25):
        sp = skewed_split(rows, seed=seed, size=1000)
        assert counts[sp.selected] / total <= 0.625
        for subset in (sp.s0, sp.s1):
            assert min(class_counts(subset).get(c, 0) for c in counts) >= 50  # 5% of 1000
