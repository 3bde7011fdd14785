"""Rows -> token ids -> padded batches, shared by training and evaluation.

Three ways a model sees a task (``Task.kind`` x the model's kind):

- encoder (sequence classification/regression): ``tokenizer(text_a, text_b)`` and the label.
- causal LM, classification: the prompt ``Task.format_prompt(row)`` followed by the answer
  ``Task.choices()[label]``; only the answer tokens are trained and scored.
- causal LM, text: texts joined with EOS and cut into blocks of ``max_length`` tokens.

Causal-LM batches are padded on the LEFT with explicit ``position_ids`` (counted from each row's
first real token), so the answer tokens sit at the same final positions in every row and a
padded row computes exactly what it would alone. That lets training and scoring ask the model for
the logits of the last few positions only (``logits_to_keep``) instead of projecting every
position onto the whole vocabulary (49k words for SmolLM2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PemarithError

Feature = dict[str, Any]

#: config.model_type values of encoders that get a sequence-classification head.
ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "electra",
        "deberta",
        "deberta-v2",
        "albert",
        "mpnet",
        "camembert",
        "modernbert",
    }
)


def model_kind(name: str) -> str:
    """``"encoder"`` or ``"causal"`` for a model name, from the short-name table or its config."""
    from .models import PACKAGED, resolve_model

    if name in PACKAGED:
        return PACKAGED[name].kind
    path = resolve_model(name)
    config_file = Path(path) / "config.json"
    if not config_file.is_file():  # a hub id: ask transformers
        from transformers import AutoConfig

        from .models import from_pretrained

        config = from_pretrained(AutoConfig, path).to_dict()
    else:
        config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal"
    if config.get("model_type") in ENCODER_TYPES or any(
        a.endswith(("ForSequenceClassification", "ForMaskedLM")) for a in archs
    ):
        return "encoder"
    raise PemarithError(
        f"cannot tell whether {name} is an encoder or a causal LM "
        f"(architectures {archs}, model_type {config.get('model_type')!r})"
    )


def check_rows(rows: Sequence[Mapping[str, Any]], task: Any, labelled: bool = True) -> None:
    """Fail clearly when ``rows`` lack the columns ``load_split`` promises."""
    if not rows:
        raise PemarithError(f"task {task.name}: no rows")
    need = ("text_a", "label") if labelled and task.kind != "text" else ("text_a",)
    for i, row in enumerate(rows[:5]):
        missing = [k for k in need if k not in row]
        if missing:
            raise PemarithError(
                f"task {task.name}: row {i} has no {', '.join(missing)} "
                f"(has {', '.join(map(str, row))}); rows need text_a, text_b, label"
            )
    if labelled and task.kind == "classification":
        bad = [r["label"] for r in rows if r["label"] not in range(task.num_labels)]
        if bad:
            raise PemarithError(
                f"task {task.name}: label {bad[0]!r} is not a class index in 0..{task.num_labels - 1}"
            )


def encoder_features(
    tok: Any, task: Any, rows: Sequence[Mapping[str, Any]], max_length: int
) -> list[Feature]:
    """``tokenizer(text_a, text_b)`` truncated to ``max_length``, plus ``labels`` if present."""
    a = [r["text_a"] for r in rows]
    b = [r.get("text_b") for r in rows] if task.text_b is not None else None
    enc = (
        tok(a, b, truncation=True, max_length=max_length)
        if b
        else tok(a, truncation=True, max_length=max_length)
    )
    feats = []
    for i, row in enumerate(rows):
        f = {k: enc[k][i] for k in enc.keys()}
        if row.get("label") is not None:
            f["labels"] = float(row["label"]) if task.kind == "regression" else int(row["label"])
        feats.append(f)
    return feats


def choice_ids(tok: Any, task: Any) -> list[list[int]]:
    """Token ids of each class's answer continuation (``Task.choices()``)."""
    ids = [tok(c, add_special_tokens=False).input_ids for c in task.choices()]
    if any(not c for c in ids):
        raise PemarithError(f"task {task.name}: an answer word tokenizes to nothing")
    return ids


def prompt_ids(tok: Any, task: Any, row: Mapping[str, Any], room: int) -> list[int]:
    """The prompt's ids, cut from the left to ``room`` tokens (the question at the end stays)."""
    ids = tok(task.format_prompt(row)).input_ids
    return ids[-room:] if len(ids) > room else ids


def prompt_features(tok: Any, task: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[Feature]:
    """Prompt + answer of the row's label; ``labels`` is -100 on the prompt (not trained)."""
    answers = choice_ids(tok, task)
    feats = []
    for row in rows:
        ans = answers[int(row["label"])]
        p = prompt_ids(tok, task, row, max(max_length - len(ans), 1))
        feats.append({"input_ids": p + ans, "labels": [-100] * len(p) + ans})
    return feats


def lm_features(tok: Any, texts: Sequence[str], max_length: int) -> list[Feature]:
    """Texts joined by EOS, cut into blocks of ``max_length`` tokens (the last may be shorter)."""
    eos = tok.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream += tok(t, add_special_tokens=False).input_ids
        if eos is not None:
            stream.append(eos)
    blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) >= 2]


def pad(feats: Sequence[Feature], pad_id: int, side: str = "right") -> dict[str, Any]:
    """Stack features into tensors; ``side="left"`` also adds ``position_ids``."""
    import torch

    width = max(len(f["input_ids"]) for f in feats)
    out: dict[str, list] = {"input_ids": [], "attention_mask": []}
    extra = [k for k in feats[0] if k not in ("input_ids", "attention_mask")]
    for k in extra:
        out[k] = []
    for f in feats:
        n = width - len(f["input_ids"])

        def fill(seq: list, value: Any, n: int = n) -> list:
            return [value] * n + list(seq) if side == "left" else list(seq) + [value] * n

        out["input_ids"].append(fill(f["input_ids"], pad_id))
        out["attention_mask"].append(fill([1] * len(f["input_ids"]), 0))
        for k in extra:
            v = f[k]
            if isinstance(v, list):
                out[k].append(fill(v, -100 if k == "labels" else 0))
            else:
                out[k].append(v)
    batch = {k: torch.tensor(v) for k, v in out.items()}
    if side == "left":
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return batch


def batches(feats: Sequence[Feature], batch_size: int) -> Iterator[tuple[list[int], list[Feature]]]:
    """Batches of similar length (sorted by length; fewer pad tokens), with their indices."""
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        yield idx, [feats[i] for i in idx]
