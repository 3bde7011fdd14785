"""The validation loss a search can minimise (``pemarith search --objective loss``).

LoraHub chooses its coefficients by the loss on a few examples rather than by accuracy: a loss
moves with every coefficient, an accuracy on a few rows is a step function. Per task kind:

- encoder, classification: the mean cross-entropy of the head,
  ``loss = -1/n sum_i log softmax(z_i)[y_i]``;
- encoder, regression: the mean squared error ``1/n sum_i (z_i - y_i)^2``;
- causal LM, classification: the cross-entropy over the answer choices,
  ``-1/n sum_i log softmax(s_i)[y_i]`` with ``s_i`` the answers' log-likelihoods
  (:func:`~pemarith.hf.evaluate.score_choices`);
- causal LM, text: the mean token negative log-likelihood, ``log(perplexity)``.

The loss costs one more forward pass over the rows than the metrics do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import PemarithError
from .evaluator import Evaluator


def task_loss(
    model: Any,
    tok: Any,
    task: Any,
    rows: Sequence[Mapping[str, Any]],
    scores: Mapping[str, float],
    batch_size: int = 32,
) -> float:
    """The loss of ``model`` on ``rows`` of ``task`` (see the module docstring); ``scores`` are
    the metrics already computed on the same rows (text tasks take their perplexity)."""
    import torch

    from . import features as F
    from .evaluate import is_encoder, model_device, score_choices

    if task.kind == "text":
        ppl = next((v for k, v in scores.items() if k.split(".")[-1] == "perplexity"), None)
        if ppl is None:
            raise PemarithError(
                f"--objective loss on text task {task.name} needs its perplexity; add --metric perplexity"
            )
        return math.log(ppl)
    labels = np.asarray([r["label"] for r in rows], dtype=np.float64)
    if not is_encoder(model):
        logp = torch.log_softmax(torch.from_numpy(score_choices(model, tok, task, rows, batch_size)), -1)
        picked = logp[torch.arange(len(rows)), torch.from_numpy(labels.astype(np.int64))]
        return float(-picked.mean())
    feats = F.encoder_features(tok, task, [{**r, "label": None} for r in rows], 128)
    total, dev = 0.0, model_device(model)
    with torch.inference_mode():
        for idx, chunk in F.batches(feats, batch_size):
            batch = {k: v.to(dev) for k, v in F.pad(chunk, tok.pad_token_id).items()}
            logits = model(**batch).logits.float().cpu()
            y = torch.from_numpy(labels[idx])
            if task.kind == "regression":
                total += float(((logits[:, 0].double() - y) ** 2).sum())
            else:
                total += float(torch.nn.functional.cross_entropy(logits, y.long(), reduction="sum"))
    return total / max(len(rows), 1)


class LossSession:
    """A :class:`~pemarith.hf.inplace.Session` whose scores also hold ``loss`` (``task.loss``
    with several tasks): the mean of the tasks' losses is ``loss`` itself."""

    def __init__(self, session: Evaluator):
        self.inner = session
        self.text_only = session.text_only

    def load(self, pem: Any, mode: str, rank: int | None, keep: str | None) -> None:
        self.inner.load(pem, mode, rank, keep)

    def primary_metrics(self, keys: Sequence[str]) -> list[str]:
        return self.inner.primary_metrics(keys)

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        s = self.inner
        scores = s.evaluate(split, base)
        if base:
            return scores
        losses = []
        for task in s.tasks:
            rows, _ = s._data(task, split)
            losses.append(task_loss(s.live.model, s._tok, task, rows, scores, s.config.batch_size))
            if len(s.tasks) > 1:
                scores[f"{task.name}.loss"] = losses[-1]
        scores["loss"] = sum(losses) / len(losses)
        return scores
