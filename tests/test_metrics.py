"""Metrics against hand computations on small batches."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from pemarith.errors import PemarithError  # noqa: E402
from pemarith.hf import metrics as M  # noqa: E402

PRED = [1, 0, 1, 1, 0, 1]
REF = [1, 0, 0, 1, 1, 1]
# confusion: tp=3 (0,3,5), tn=1 (1), fp=1 (2), fn=1 (4)
TP, TN, FP, FN = 3, 1, 1, 1


def test_accuracy_by_hand() -> None:
    assert M.accuracy(PRED, REF) == pytest.approx((TP + TN) / 6)


def test_matthews_by_hand() -> None:
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert M.matthews_corr(PRED, REF) == pytest.approx(mcc)
    assert M.matthews_corr([1, 1, 1], [1, 0, 1]) == 0.0  # undefined: sklearn's 0


def test_f1_and_mrpc_pair_by_hand() -> None:
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    f1 = 2 * precision * recall / (precision + recall)
    assert M.f1(PRED, REF) == pytest.approx(f1)
    got = M.compute(("f1", "accuracy"), PRED, REF)  # MRPC's metrics, as its task lists them
    assert got == {"f1": pytest.approx(f1), "accuracy": pytest.approx(4 / 6)}
    assert M.f1_accuracy(PRED, REF) == pytest.approx((f1 + 4 / 6) / 2)


def test_f1_macro_by_hand() -> None:
    # class 1: f1 as above (0.75); class 0: tp=1, fp=1, fn=1 -> 0.5
    assert M.f1_macro(PRED, REF) == pytest.approx((0.75 + 0.5) / 2)


def test_spearman_and_pearson_by_hand() -> None:
    pred = [0.1, 0.4, 0.35, 0.8]
    ref = [1.0, 2.0, 3.0, 4.0]
    # ranks of pred: 1, 3, 2, 4; d = 0, 1, -1, 0 -> rho = 1 - 6*2 / (4*15)
    assert M.spearman(pred, ref) == pytest.approx(1 - 6 * 2 / (4 * 15))
    mp, mr = sum(pred) / 4, sum(ref) / 4
    cov = sum((p - mp) * (r - mr) for p, r in zip(pred, ref))
    sp = math.sqrt(sum((p - mp) ** 2 for p in pred))
    sr = math.sqrt(sum((r - mr) ** 2 for r in ref))
    assert M.pearson(pred, ref) == pytest.approx(cov / (sp * sr))
    assert math.isnan(M.spearman([1.0, 1.0, 1.0], ref[:3]))  # constant prediction


def test_every_task_metric_is_known() -> None:
    from pemarith.hf.tasks import TASKS

    for task in TASKS.values():
        for name in task.metrics:
            assert name in M.SPECIAL or M.get_metric(name)


def test_unknown_metric_and_mismatched_lengths() -> None:
    with pytest.raises(PemarithError, match="did you mean 'accuracy'"):
        M.get_metric("acuracy")
    with pytest.raises(PemarithError, match="must match"):
        M.accuracy([1, 0], [1])
    with pytest.raises(PemarithError, match="no examples"):
        M.accuracy([], [])
    assert M.get_metric("mcc") is M.matthews_corr
