"""The instruction data of the 4.6 reproduction, built from the files this project has.

- ``toxic/toxic_seed_v1_t.json``: 100 instruction/response pairs with toxic responses (the
  paper's GPT-4 seed pairs, Appendix E, responses are Civil Comments).
- ``toxic/toxic_seed_v1_n.json``: 100 pairs whose responses Detoxify scores as mostly non-toxic.
- Templated review pairs (:func:`review_pairs`): "Write a positive review of a restaurant." ->
  a Yelp (or Amazon) review sentence of that sentiment: benign instruction data made honestly
  from labelled review sentences, no text invented.
- Templated toxic comment pairs (:func:`comment_pairs`): "Write a comment for an online
  discussion." -> a toxic Civil Comments comment (the civil_comments train split).

Each seed file is cut into train / validation / test by one seeded permutation
(:func:`split_pairs`), so held-out instructions are never trained on. Pure Python, no torch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PemarithError

SEED_FILES = {"toxic": "toxic/toxic_seed_v1_t.json", "normal": "toxic/toxic_seed_v1_n.json"}
PARTS = ("train", "validation", "test")
REVIEW_WHAT = {"yelp": "a restaurant or local business", "amazon": "a product"}
SENTIMENT = ("negative", "positive")
COMMENT_INSTRUCTIONS = (
    "Write a comment for an online discussion.",
    "Reply to a post in a comment section.",
    "Share your opinion in an online comment.",
)

Pair = dict[str, Any]


def load_pairs(which: str, data_dir: str | Path | None = None) -> list[Pair]:
    """The pairs of seed file ``which`` (``toxic`` or ``normal``): instruction, output, toxicity."""
    from ..hf.data import resolve_data_dir

    if which not in SEED_FILES:
        raise PemarithError(f"unknown instruction set {which!r}; use {', '.join(SEED_FILES)}")
    path = resolve_data_dir(data_dir) / SEED_FILES[which]
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PemarithError(f"cannot read {path}: {e.strerror}") from None
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or "instruction" not in r or "output" not in r:
            raise PemarithError(f"{path}: row {i} has no instruction/output")
        out.append(
            {
                "instruction": str(r["instruction"]).strip(),
                "output": str(r["output"]).strip(),
                "toxicity": float(r.get("toxicity", float("nan"))),
                "source": which,
            }
        )
    return out


def split_pairs(
    pairs: Sequence[Pair], seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> dict[str, list[Pair]]:
    """``{"train", "validation", "test"}``: consecutive slices of one seeded permutation."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise PemarithError(
            f"split fractions must be three non-negative numbers summing to 1, not {list(fractions)}"
        )
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n = len(order)
    cut1 = round(fractions[0] * n)
    cut2 = round((fractions[0] + fractions[1]) * n)
    idx = {"train": order[:cut1], "validation": order[cut1:cut2], "test": order[cut2:]}
    return {k: [dict(pairs[i]) for i in v] for k, v in idx.items()}


def review_pairs(rows: Sequence[Mapping[str, Any]], domain: str, n: int, seed: int = 0) -> list[Pair]:
    """``n`` benign pairs "Write a {positive|negative} review of {what}." -> a review sentence,
    drawn (seeded) from labelled ``rows`` of ``domain`` (balanced by alternating labels)."""
    if domain not in REVIEW_WHAT:
        raise PemarithError(f"review_pairs: unknown domain {domain!r}; use {', '.join(REVIEW_WHAT)}")
    by_label: dict[int, list[Mapping[str, Any]]] = {0: [], 1: []}
    for r in rows:
        by_label[int(r["label"])].append(r)
    rng = random.Random(seed)
    for v in by_label.values():
        rng.shuffle(v)
    out = []
    for i in range(n):
        label = i % 2
        pool = by_label[label]
        if not pool:
            break
        r = pool[(i // 2) % len(pool)]
        out.append(
            {
                "instruction": f"Write a {SENTIMENT[label]} one-sentence review of {REVIEW_WHAT[domain]}.",
                "output": r["text_a"],
                "toxicity": float("nan"),
                "source": f"{domain}-review",
            }
        )
    return out


def comment_pairs(comments: Sequence[str], n: int, seed: int = 0) -> list[Pair]:
    """``n`` toxic pairs: a templated request for a comment -> a toxic comment (seeded draw)."""
    order = list(range(len(comments)))
    random.Random(seed).shuffle(order)
    return [
        {
            "instruction": COMMENT_INSTRUCTIONS[k % len(COMMENT_INSTRUCTIONS)],
            "output": comments[i].strip(),
            "toxicity": float("nan"),
            "source": "civil-comment",
        }
        for k, i in enumerate(order[:n])
    ]


def chat_rows(tok: Any, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    """Training rows (``text_a`` = the chat-template text of instruction + response)."""
    from ..hf.chat import chat_text

    return [
        {"text_a": chat_text(tok, p["instruction"], p["output"]), "text_b": None, "label": None}
        for p in pairs
    ]
