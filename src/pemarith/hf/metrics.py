"""Task metrics (GLUE conventions) and sliding-window perplexity.

The classification/regression metrics are thin wrappers over scikit-learn and scipy; each takes
``(predictions, references)`` and returns one float. ``METRICS`` maps the names that task records
use (``Task.metrics``; MRPC lists ``f1`` and ``accuracy``) to them; ``compute(names, ...)`` gives
``{name: value}``. The first metric of a task is the one to select lambda on.

``perplexity`` needs torch and is imported lazily inside it; importing this module costs only numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import PemarithError, did_you_mean

MetricFn = Callable[[Sequence[Any], Sequence[Any]], float]


def _arrays(predictions: Sequence[Any], references: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape:
        raise PemarithError(f"metric: {len(p)} predictions for {len(r)} references; they must match")
    if p.size == 0:
        raise PemarithError("metric: no examples to score")
    return p, r


def accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Share of exact matches."""
    from sklearn.metrics import accuracy_score

    p, r = _arrays(predictions, references)
    return float(accuracy_score(r, p))


def matthews_corr(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Matthews correlation coefficient (CoLA's official metric), in [-1, 1]; 0 if undefined."""
    from sklearn.metrics import matthews_corrcoef

    p, r = _arrays(predictions, references)
    return float(matthews_corrcoef(r, p))


def _correlation(kind: str, predictions: Sequence[Any], references: Sequence[Any]) -> float:
    import warnings

    from scipy.stats import pearsonr, spearmanr

    p, r = _arrays(predictions, references)
    p, r = p.astype(np.float64), r.astype(np.float64)
    if p.size < 2:
        return float("nan")
    with warnings.catch_warnings():  # constant input: NaN is the honest answer, not a warning
        warnings.simplefilter("ignore")
        return float((spearmanr if kind == "spearman" else pearsonr)(p, r).statistic)


def spearman(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Spearman rank correlation (STS-B's headline metric); NaN for a constant prediction."""
    return _correlation("spearman", predictions, references)


def pearson(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Pearson correlation (reported alongside Spearman on STS-B); NaN for a constant one."""
    return _correlation("pearson", predictions, references)


def f1(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Binary F1 of the positive class, label 1 (the MRPC/QQP convention)."""
    from sklearn.metrics import f1_score

    p, r = _arrays(predictions, references)
    return float(f1_score(r, p, pos_label=1, average="binary", zero_division=0.0))


def f1_macro(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Unweighted mean of the per-class F1 scores (multi-class tasks such as Davidson)."""
    from sklearn.metrics import f1_score

    p, r = _arrays(predictions, references)
    return float(f1_score(r, p, average="macro", zero_division=0.0))


def f1_accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """The mean of F1 and accuracy (GLUE's single MRPC/QQP number)."""
    return (f1(predictions, references) + accuracy(predictions, references)) / 2


#: Metric functions ``(predictions, references) -> float`` by the names task records use.
METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "matthews_corr": matthews_corr,
    "spearman": spearman,
    "pearson": pearson,
    "f1": f1,
    "f1_macro": f1_macro,
    "f1_accuracy": f1_accuracy,
}

#: Other spellings of the same metrics.
ALIASES: dict[str, str] = {
    "acc": "accuracy",
    "mcc": "matthews_corr",
    "matthews": "matthews_corr",
    "matthews_correlation": "matthews_corr",
    "spearmanr": "spearman",
    "pearsonr": "pearson",
}

#: Metrics computed from generations or log-likelihoods, not from (prediction, reference)
#: pairs; evaluate.py computes them itself.
SPECIAL = ("perplexity", "toxicity")


def get_metric(name: str) -> MetricFn:
    """The metric function for ``name`` (or one of its aliases)."""
    key = ALIASES.get(name, name)
    if key not in METRICS:
        raise PemarithError(
            f"unknown metric {name!r}{did_you_mean(name, [*METRICS, *ALIASES])}; known: {', '.join(METRICS)}"
        )
    return METRICS[key]


def compute(names: Sequence[str], predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
    """``{name: get_metric(name)(predictions, references)}`` for each name, in order."""
    if isinstance(names, str):
        names = (names,)
    return {name: get_metric(name)(predictions, references) for name in names}


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    stride: int = 512,
    max_length: int | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Sliding-window perplexity of ``text`` (Hugging Face's "Perplexity of fixed-length models").

    The text is tokenized once (``max_tokens`` keeps only its first tokens, so CI can score a
    prefix). Windows of ``max_length`` tokens start every ``stride`` tokens; each window scores
    only the tokens not scored by the previous window, conditioning on the rest as context::

        ppl = exp( sum_t -log p(x_t | x_{max(0, e-max_length)..t-1}) / N )

    where N counts the scored tokens (every token but the first). ``max_length`` defaults to the
    model's context size capped at 1024 (the paper's GPT-2 setting; a larger window is much slower
    on CPU and barely changes the number). ``stride == max_length`` gives disjoint windows.

    Returns ``{"perplexity", "nll", "tokens"}`` where ``nll`` is the mean negative log-likelihood.
    """
    import torch

    if stride < 1:
        raise PemarithError(f"perplexity: stride must be >= 1, not {stride}")
    if max_length is None:
        ctx = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", 1024
        )
        max_length = min(int(ctx), 1024)
    if max_length < 2:
        raise PemarithError(f"perplexity: max_length must be >= 2, not {max_length}")
    stride = min(stride, max_length)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    seq_len = int(ids.shape[0])
    if seq_len < 2:
        raise PemarithError("perplexity: the text has fewer than 2 tokens")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    starts = list(range(0, seq_len, stride))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="window")
    try:
        with torch.inference_mode():
            for begin in starts:
                end = min(begin + max_length, seq_len)
                window = ids[begin:end].unsqueeze(0).to(device)
                logits = model(input_ids=window).logits[0, :-1].float()
                targets = window[0, 1:]
                nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
                # score only tokens after the previous window's end (position p predicts p+1)
                first = max(prev_end - begin - 1, 0)
                nll_sum += float(nll[first:].sum())
                n_scored += int(nll.shape[0] - first)
                prev_end = end
                if end == seq_len:
                    break
    finally:
        model.train(was_training)
    mean = nll_sum / n_scored
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": n_scored}
