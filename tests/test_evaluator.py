"""Every evaluator a sweep or a scenario uses states the one protocol
(pemarith.hf.evaluator.Evaluator): same methods, same parameters."""

from __future__ import annotations

import inspect

import pytest

from pemarith.errors import PemarithError
from pemarith.hf.evaluator import Evaluator, Predictor
from pemarith.hf.inplace import Session
from pemarith.hf.search_loss import LossSession
from pemarith.scenarios.detox_instruct import DetoxSession
from pemarith.scenarios.domain_transfer import ClsSession
from pemarith.scenarios.multitask import MeanSession
from pemarith.scenarios.unlearning import ToxSession

METHODS = ("load", "evaluate", "primary_metrics")


def params(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", [Session, LossSession, MeanSession, ClsSession, ToxSession, DetoxSession])
def test_each_evaluator_has_the_protocols_methods(cls):
    for name in METHODS:
        assert params(getattr(cls, name)) == params(getattr(Evaluator, name)), (cls.__name__, name)


def test_the_default_session_and_the_mean_column_predict():
    assert params(Session.predict) == params(Predictor.predict) == params(MeanSession.predict)


class Fixed:
    """A minimal evaluator: constant scores, no model."""

    text_only = False

    def __init__(self):
        self.loaded = []

    def load(self, pem, mode, rank, keep):
        self.loaded.append((pem, mode, rank, keep))

    def evaluate(self, split, base=False):
        return {"a.acc": 0.5, "b.acc": 1.0, "b.f1": 0.0}

    def primary_metrics(self, keys):
        return [k for k in keys if k.endswith(".acc")]


def test_a_wrapper_over_a_plain_evaluator():
    inner = Fixed()
    assert isinstance(inner, Evaluator) and not isinstance(inner, Predictor)
    mean = MeanSession(inner)
    assert isinstance(mean, Evaluator)
    mean.load("pem", "exact", None, None)
    assert inner.loaded == [("pem", "exact", None, None)]
    assert mean.evaluate("validation")["mean"] == 0.75
    with pytest.raises(PemarithError, match="Fixed gives no per-row predictions"):
        mean.predict("test")
