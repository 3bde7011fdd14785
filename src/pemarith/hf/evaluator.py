"""The one interface a sweep or a search evaluates compositions through.

Every evaluator holds a base model and the tasks' rows and scores one composition at a time:
``load(pem, ...)`` makes ``pem`` the live adapter (in place: the base is never reloaded), then
``evaluate(split)`` scores it on ``split`` of every task (``base=True``: the base model with
no adapter). Implementations: :class:`pemarith.hf.inplace.Session` (the default), and the
wrappers and scenario evaluators that follow the same protocol
(:class:`~pemarith.hf.search_loss.LossSession`, the 4.3 mean-of-tasks column, 4.4/4.6's
toxicity and 4.5's classification-by-generation sessions). :func:`pemarith.hf.sweep.run_sweep`
and the scenarios' ``Bench`` call nothing else.

This module imports no torch: it only states the protocol (``typing.Protocol``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Evaluator(Protocol):
    """Scores one live composition at a time on the tasks' splits."""

    #: whether every task is scored on generated text only (a sweep then always scores the base
    #: model too: a rule such as "toxicity below the base's" needs it)
    text_only: bool

    def load(self, pem: Any, mode: str, rank: int | None, keep: str | None) -> None:
        """Make ``pem`` (a :class:`pemarith.PEM`) the live adapter: ``mode``/``rank`` as in
        :func:`pemarith.compose`, ``keep`` a saved head or embedding to keep."""

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        """Scores of the live adapter (of the base model if ``base``) on ``split`` of every
        task: ``{metric: value}``, prefixed ``task.`` with several tasks."""

    def primary_metrics(self, keys: Sequence[str]) -> list[str]:
        """Of the score names ``keys``, the ones a rule selects on by default (each task's
        first metric)."""


@runtime_checkable
class Predictor(Evaluator, Protocol):
    """An :class:`Evaluator` that also gives per-row predictions (for paired tests)."""

    def predict(self, split: str) -> dict[str, dict[str, list]]:
        """``{task: {"predictions": [...], "labels": [...]}}`` of the live adapter on ``split``
        of every labelled task."""
