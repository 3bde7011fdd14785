"""The causal-LM settings of the paper: 4.4 unlearning, 4.5 domain transfer, 4.6 detox.

Fast tests cover the pure pieces (data building, chunking, the paired test against a hand
computation, rule picks, report rendering from hand-made results); the quick runs on the real
SmolLM2 are ``slow`` (not ``ci``: SmolLM2 training and generation are too slow for CI). The
scenarios are registered in a patched registry here, so these tests do not depend on
``scenarios/registry.py`` listing them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pemarith.errors import PemarithError
from pemarith.hf.stats import mcnemar_exact
from pemarith.scenarios import (
    detox_instruct,
    domain_transfer,
    load_recipe,
    registry,
    unlearning,
)
from pemarith.scenarios.instruct_data import comment_pairs, review_pairs, split_pairs
from pemarith.scenarios.lm_common import chunk_ids
from pemarith.scenarios.recipe import RecipeError
from pemarith.scenarios.report import blocks

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"unlearning": unlearning, "domain-transfer": domain_transfer, "detox-instruct": detox_instruct}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, mod in MODULES.items():
        if name not in registry.SCENARIOS:
            monkeypatch.setitem(registry.SCENARIOS, name, mod.SCENARIO)


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("quick", [False, True])
def test_recipes_load(name: str, quick: bool) -> None:
    r = load_recipe(name, quick=quick)
    assert r.scenario == name and r.model == "smollm2" and r.quick is quick
    assert "full" not in r.methods
    if quick:
        assert all(r.train[m].steps <= 2 for m in r.methods)
        assert len(r.sweep.grid.split(",")) == 3


def test_recipe_sizes_follow_the_paper() -> None:
    u = load_recipe("unlearning")
    assert u.sweep.grid == "0:1:0.1" and u.sweep.select == "max l where ppl <= base + 0.5"
    assert u.options.samples == 1000 and u.options.threshold == 0.8
    d = load_recipe("domain-transfer")
    assert d.options.chunk_tokens == 128 and set(d.options.directions) == {"amazon->yelp", "yelp->amazon"}
    t = load_recipe("detox-instruct")
    assert t.methods == ("lora",) and t.train["lora"].r == 16 and "0" in t.sweep.grid


@pytest.mark.parametrize(
    "cls, table, message",
    [
        (domain_transfer.TransferOptions, {"directions": ["amazon->amazon"]}, "SOURCE->TARGET"),
        (domain_transfer.TransferOptions, {"alpha": 1.5}, "alpha"),
        (unlearning.UnlearnOptions, {"threshold": 0}, "threshold"),
        (unlearning.UnlearnOptions, {"ppl_tokens": 1}, "ppl_tokens"),
        (unlearning.UnlearnOptions, {"val_samples": 0}, "val_samples"),
        (detox_instruct.DetoxOptions, {"fractions": [0.5, 0.5, 0.5]}, "fractions"),
    ],
)
def test_bad_options_fail(cls: type, table: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        cls(**table)


# ----------------------------------------------------------------------------- pure pieces


def test_mcnemar_matches_a_hand_computation() -> None:
    # b = 1 (first right, second wrong), c = 5: n = 6, p = 2 * (C(6,0) + C(6,1)) / 64 = 14/64
    first = [True] * 10 + [True] + [False] * 5 + [False] * 4
    second = [True] * 10 + [False] + [True] * 5 + [False] * 4
    t = mcnemar_exact(first, second)
    assert (t["b"], t["c"], t["n"]) == (1, 5, 6)
    assert t["p"] == pytest.approx(14 / 64)
    # symmetric, and 1 when the classifiers never disagree
    assert mcnemar_exact(second, first)["p"] == pytest.approx(14 / 64)
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0
    # b = 0, c = 10: p = 2 / 1024 < 0.05; b = c: p = 1 (capped)
    assert mcnemar_exact([False] * 10, [True] * 10)["p"] == pytest.approx(2 / 1024)
    assert mcnemar_exact([True, False], [False, True])["p"] == 1.0
    with pytest.raises(PemarithError, match="same rows"):
        mcnemar_exact([True], [True, False])


def test_mcnemar_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 9), (0, 4), (12, 12), (17, 5)]:
        first = [True] * b + [False] * c
        second = [False] * b + [True] * c
        ref = stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_exact(first, second)["p"] == pytest.approx(ref)


def test_chunk_ids() -> None:
    ids = list(range(10))
    assert chunk_ids(ids, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_ids(ids, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # a 1-token tail is dropped
    assert chunk_ids(ids, 3, min_len=1)[-1] == [9]
    with pytest.raises(ValueError):
        chunk_ids(ids, 0)


def test_chunk_ids_is_how_the_trainer_cuts_lm_rows() -> None:
    from pemarith.hf.features import lm_features

    class Tok:  # one token per character, EOS = 0
        eos_token_id = 0

        def __call__(self, text: str, add_special_tokens: bool = False):
            return type("Enc", (), {"input_ids": [ord(ch) for ch in text]})()

    texts = ["abcde", "fgh", "ijklmnop"]
    stream = [i for t in texts for i in [*map(ord, t), 0]]
    assert [f["input_ids"] for f in lm_features(Tok(), texts, 4)] == chunk_ids(stream, 4)


def test_split_pairs_is_disjoint_seeded_and_complete() -> None:
    pairs = [{"instruction": f"i{k}", "output": f"o{k}"} for k in range(100)]
    a = split_pairs(pairs, seed=0)
    assert [len(a[p]) for p in ("train", "validation", "test")] == [60, 20, 20]
    seen = [p["instruction"] for part in a.values() for p in part]
    assert sorted(seen) == sorted(p["instruction"] for p in pairs)
    assert split_pairs(pairs, seed=0) == a and split_pairs(pairs, seed=1) != a
    with pytest.raises(PemarithError):
        split_pairs(pairs, fractions=(0.5, 0.6, -0.1))


def test_review_and_comment_pairs() -> None:
    rows = [{"text_a": f"bad {k}", "label": 0} for k in range(5)] + [
        {"text_a": f"good {k}", "label": 1} for k in range(5)
    ]
    pairs = review_pairs(rows, "yelp", 6, seed=0)
    assert len(pairs) == 6
    for k, p in enumerate(pairs):
        word = ("negative", "positive")[k % 2]
        assert p["instruction"].startswith(f"Write a {word} ") and "restaurant" in p["instruction"]
        assert p["output"].startswith("bad" if k % 2 == 0 else "good")
    with pytest.raises(PemarithError, match="domain"):
        review_pairs(rows, "imdb", 2)
    cp = comment_pairs(["c1", "c2", "c3"], 2, seed=0)
    assert len(cp) == 2 and {p["output"] for p in cp} <= {"c1", "c2", "c3"}


def test_seed_files_split_into_held_out_instructions() -> None:
    from pemarith.scenarios.instruct_data import load_pairs

    try:
        toxic = load_pairs("toxic")
    except PemarithError:
        pytest.skip("no shared data directory")
    assert len(toxic) == 100 and all(p["instruction"] and p["output"] for p in toxic)
    parts = split_pairs(toxic, 0)
    train = {p["instruction"] for p in parts["train"]}
    assert (
        not train & {p["instruction"] for p in parts["test"]} or len({p["instruction"] for p in toxic}) < 100
    )  # duplicates in the file, if any


def test_split_text_cuts_at_a_line_break() -> None:
    a, b = unlearning.split_text("one\ntwo\nthree\nfour\n", 0.5)
    assert a + "\n" + b == "one\ntwo\nthree\nfour\n" and a.endswith(("two", "three"))


def test_detox_lambda_rule() -> None:
    curve = [
        {"l": 0.0, "nll_normal": 2.00, "toxicity_toxic": 0.3},
        {"l": 0.5, "nll_normal": 2.04, "toxicity_toxic": 0.2},
        {"l": 1.0, "nll_normal": 2.20, "toxicity_toxic": 0.1},
    ]
    lam, rule = detox_instruct.pick_lambda(curve, "l", 0.05)
    assert lam == 0.5 and "nll_normal <= 2.05" in rule
    with pytest.raises(RecipeError, match="contain 0"):
        detox_instruct.pick_lambda(curve[1:], "l", 0.05)


# ----------------------------------------------------------------------------- rendering


def _recipe(name: str) -> dict:
    return load_recipe(name, quick=True).to_json()


def _m(tox: float, share: float, ppl: float) -> dict:
    return {
        "toxicity": tox,
        "toxic_share": share,
        "perplexity": ppl,
        "seconds": 1.0,
        "examples": [{"text": " hello | world", "toxicity": tox}],
    }


def test_unlearning_tables_have_the_paper_shape() -> None:
    cell = {
        "task": "civil_comments",
        "method": "lora",
        "mode": "factorwise",
        "seed": 0,
        "lambda": 1.0,
        "rows": {
            "base": _m(0.05, 0.01, 20.0),
            "toxic": _m(0.3, 0.2, 20.4),
            "negated": _m(0.02, 0.0, 20.3),
            "ablation@1": _m(0.3, 0.2, 20.4),
        },
        "base_validation": {"perplexity": 19.0, "toxicity": 0.05, "toxic_share": 0.01},
        "curve": [
            {"l": 0.0, "perplexity": 19.0, "toxicity": 0.05, "toxic_share": 0.0},
            {"l": 1.0, "perplexity": 19.4, "toxicity": 0.02, "toxic_share": 0.0},
        ],
        "train_seconds": 10.0,
        "train_cpu_seconds": 9.0,
        "sweep_seconds": 5.0,
    }
    results = {"recipe": _recipe("unlearning"), "cells": [cell]}
    s = unlearning.sections(results)
    assert "| negated LoRA | 1 (paper 1) | 0.020 | 0.0 | 20.30 | 0.01 | 0.1 | 16.67 |" in s["table"]
    assert "| ablation LoRA | 1 | 0.300 | 20.0 | 20.40 | 0.43 | 34.3 | 17.00 |" in s["table"]
    assert "**picked**" in s["curve"] and "hello \\| world" in s["examples"]
    text = registry.get_scenario("unlearning").render(results)
    assert set(blocks(text)) == set(s) and "(quick run)" in text


def _preds(acc: int, n: int = 10) -> dict:
    return {"accuracy": acc / n}


def test_domain_transfer_tables_mark_significant_merges() -> None:
    base = {
        "method": "lora",
        "mode": "factorwise",
        "seed": 0,
        "lambda": 0.7,
        "lambda_targetval": 0.3,
        "n_test": 100,
        "curve": [[0.0, 0.5, 0.5], [1.0, 0.9, 0.8]],
        "train_seconds": {},
        "train_cpu_seconds": {},
        "sweep_seconds": 3.0,
        "modules": {},
    }
    cells = [
        {
            **base,
            "task": "yelp",
            "direction": "amazon->yelp",
            "source": "amazon",
            "target": "yelp",
            "test": {"source": 0.80, "merge": 0.86, "merge_targetval": 0.82, "target": 0.90},
            "mcnemar": {
                "merge": {"b": 0, "c": 6, "n": 6, "p": 2 / 64},
                "merge_targetval": {"b": 1, "c": 3, "n": 4, "p": 0.625},
            },
        },
        {
            **base,
            "task": "amazon",
            "direction": "yelp->amazon",
            "source": "yelp",
            "target": "amazon",
            "test": {"source": 0.7, "merge": 0.7, "merge_targetval": 0.7, "target": 0.8},
            "mcnemar": {
                "merge": {"b": 0, "c": 0, "n": 0, "p": 1.0},
                "merge_targetval": {"b": 0, "c": 0, "n": 0, "p": 1.0},
            },
        },
    ]
    results = {"recipe": _recipe("domain-transfer"), "cells": cells, "fragments": {"amazon": 3}}
    s = domain_transfer.sections(results)
    assert "| LoRA | 80.00 | 86.00* | 82.00 | 90.00 | 70.00 | 70.00 | 70.00 | 80.00 |" in s["table"]
    assert "97.31*" in s["paper"] and "0.0312" in s["tests"]


def test_detox_tables() -> None:
    def m(t: float) -> dict:
        return {
            "toxicity_toxic": t,
            "toxicity_normal": 0.01,
            "toxic_share_toxic": 0.1,
            "toxic_share_normal": 0.0,
            "nll_normal": 2.5,
            "seconds": 1.0,
            "answers_toxic": [{"instruction": "Insult me.", "answer": "No.", "toxicity": t}],
            "answers_normal": [{"instruction": "Hi?", "answer": "Hello.", "toxicity": 0.0}],
        }

    cell = {
        "task": "civil_comments",
        "method": "lora",
        "seed": 0,
        "lambda": 0.4,
        "rule": "max l where nll_normal <= 2.55",
        "rows": {k: m(0.2) for k in ("base", "t1", "toxic", "merge")},
        "base_validation": {},
        "data": {"benign_train": 5, "toxic_train": 6},
        "curve": [
            {
                "l": 0.4,
                "toxicity_toxic": 0.2,
                "toxic_share_toxic": 0.1,
                "toxicity_normal": 0.0,
                "nll_normal": 2.5,
            }
        ],
        "train_seconds": {"t1": 3.0},
        "train_cpu_seconds": {},
        "sweep_seconds": 2.0,
    }
    s = detox_instruct.sections({"recipe": _recipe("detox-instruct"), "cells": [cell]})
    assert "| detoxified merge (rule's lambda) | 0.4 (paper 0.4) | 0.200 |" in s["table"]
    assert "0.158" in s["table"] and "Insult me." in s["examples"]
    # the rule picks t1 itself (l = 0): the paper's fixed lambda gets its own row and examples
    cell = {
        **cell,
        "lambda": 0.0,
        "rows": {**cell["rows"], "merge@0.4": {**m(0.05), "empty_toxic": 0.9, "empty_normal": 0.5}},
    }
    s = detox_instruct.sections({"recipe": _recipe("detox-instruct"), "cells": [cell]})
    row = next(r for r in s["table"].splitlines() if "fixed" in r)
    assert row.startswith("| merge at a fixed lambda | 0.4 (fixed) | 0.050 | 0.010 | 10 | 0 | 90 | 50 |")
    assert "0.158" in row
    assert "0.158" not in next(r for r in s["table"].splitlines() if "rule's lambda" in r)
    assert "merge (l=0.4, fixed)" in s["examples"] and "merge (l=0, rule)" in s["examples"]


@pytest.mark.parametrize("page", ["unlearning", "domain-transfer", "detox-instruct"])
def test_docs_pages_match_their_data(page: str) -> None:
    from pemarith.scenarios.docs import check_page

    path = ROOT / "docs" / "results" / f"{page}.md"
    assert path.is_file()
    assert check_page(path) == [], "rerun the quick run with --docs docs/results"


# ----------------------------------------------------------------------------- real quick runs


def _quick(name: str, tmp_path: Path) -> dict:
    from pemarith.scenarios import reproduce

    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    try:
        return reproduce(name, quick=True, out=tmp_path / name, threads=1)
    finally:
        torch.set_num_threads(threads)


def _png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG


@pytest.mark.slow
def test_quick_unlearning_end_to_end(tmp_path: Path) -> None:
    results = _quick("unlearning", tmp_path)
    cells = {c["method"]: c for c in results["cells"]}
    assert set(cells) == {"lora", "ia3"}
    for c in cells.values():
        assert c["lambda"] in {p["l"] for p in c["curve"]}
        base = c["base_validation"]["perplexity"]
        # the paper's rule: the pick is the largest value within 0.5 PPL of the base
        ok = [p["l"] for p in c["curve"] if p["perplexity"] <= base + 0.5]
        assert c["lambda"] == max(ok)
        at0 = next(p for p in c["curve"] if p["l"] == 0)
        assert at0["perplexity"] == pytest.approx(base, rel=1e-6)  # -0*toxic is the base model
        # the validation curve samples val_samples (4), every test row samples (8)
        assert c["base_validation"]["samples"] == 4
        assert {row["samples"] for row in c["rows"].values()} == {8}
        for row in c["rows"].values():
            assert 0 <= row["toxicity"] <= 1 and math.isfinite(row["perplexity"]) or row["perplexity"] > 1e6
    # Table 11: negating both LoRA factors leaves B A unchanged: the ablation is the toxic module
    lora = cells["lora"]["rows"]
    assert lora["ablation@1"]["perplexity"] == pytest.approx(lora["toxic"]["perplexity"], rel=1e-5)
    assert "| base (smollm2) |" in (tmp_path / "unlearning" / "report.md").read_text()
    _png(tmp_path / "unlearning" / "unlearning.png")


@pytest.mark.slow
def test_quick_domain_transfer_end_to_end(tmp_path: Path) -> None:
    results = _quick("domain-transfer", tmp_path)
    keys = {(c["direction"], c["method"], c["mode"]) for c in results["cells"]}
    assert keys == {
        (d, m, mode)
        for d in ("amazon->yelp", "yelp->amazon")
        for m, mode in (("lora", "factorwise"), ("lora", "exact"), ("ia3", "factorwise"))
    }
    for c in results["cells"]:
        assert c["n_test"] == 32 and 0 <= c["mcnemar"]["merge"]["p"] <= 1
        curve = {x: (s, t) for x, s, t in c["curve"]}
        assert c["lambda"] in curve and curve[c["lambda"]][0] == max(s for s, _ in curve.values())
    _png(tmp_path / "domain-transfer" / "domain_transfer.png")


@pytest.mark.slow
def test_quick_detox_instruct_end_to_end(tmp_path: Path) -> None:
    results = _quick("detox-instruct", tmp_path)
    (c,) = results["cells"]
    # the rule's pick, plus the recipe's fixed lambdas that differ from it
    fixed = {f"merge@{v:g}" for v in results["recipe"]["options"]["fixed_lambdas"] if v != c["lambda"]}
    assert set(c["rows"]) == {"base", "t1", "toxic", "merge"} | fixed and fixed
    assert all(0 <= c["rows"][k]["empty_toxic"] <= 1 for k in c["rows"])
    at0 = next(p for p in c["curve"] if p["l"] == 0)
    # l = 0 is t1 itself: its validation scores equal t1's (measured through the composition)
    assert c["lambda"] in {p["l"] for p in c["curve"]} and at0["nll_normal"] > 0
    assert c["rows"]["t1"]["answers_toxic"]
    _png(tmp_path / "detox-instruct" / "detox_instruct.png")
