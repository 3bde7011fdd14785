"""The ``config.json`` of a baked checkpoint: what was merged, said in the model's own config.

A classifier adapter (PEFT ``task_type: SEQ_CLS``) baked into an encoder checkpoint (often saved
as ``BertModel``: no head) carries its head in ``modules_to_save``; the copied ``config.json``
would still name the headless class and the base's label count, so
``AutoModelForSequenceClassification.from_pretrained(out)`` would need ``num_labels=`` and give
``LABEL_0 ...``. :func:`head_config` returns the config with

- ``architectures``: ``<Prefix>ForSequenceClassification`` (``BertModel`` -> ``Bert...``,
  ``BertForMaskedLM`` -> ``Bert...``), kept when it already is one;
- ``num_labels``: rows of the head's output weight (``classifier``, ``classifier.out_proj`` or
  ``score``); ``id2label``/``label2id`` and ``problem_type`` from a pemarith training record
  (``training.json``'s ``head``) when an input has one and it agrees, else transformers'
  ``LABEL_i``.

Anything else (causal LMs, adapters without a head) keeps the base's config unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Output layers of sequence-classification heads, last layer first.
_HEAD_OUTPUTS = ("classifier.out_proj.weight", "classifier.weight", "score.weight")
SUFFIX = "ForSequenceClassification"


def _arch(name: str) -> str:
    if name.endswith(SUFFIX):
        return name
    prefix = name.split("For", 1)[0] if "For" in name else name.removesuffix("Model")
    return prefix + SUFFIX


def _head_rows(shapes: Mapping[str, Sequence[int]]) -> int | None:
    for out in _HEAD_OUTPUTS:
        for key, shape in shapes.items():
            if key.endswith(out) and ".modules_to_save." not in key and len(shape) == 2:
                return int(shape[0])
    return None


def _record_head(paths: Sequence[Path]) -> dict[str, Any] | None:
    heads = []
    for p in paths:
        try:
            head = json.loads((p / "training.json").read_text(encoding="utf-8")).get("head")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(head, dict):
            heads.append(head)
    return heads[0] if heads and all(h == heads[0] for h in heads) else None


def head_config(
    base_config: Mapping[str, Any],
    adapter_config: Mapping[str, Any],
    head_shapes: Mapping[str, Sequence[int]],
    inputs: Sequence[Path],
) -> dict[str, Any] | None:
    """The updated config (see the module docstring), or None where nothing changes.

    ``head_shapes``: the baked checkpoint's head keys (base names) and shapes; ``inputs``: the
    adapter directories (for their training records)."""
    if adapter_config.get("task_type") != "SEQ_CLS":
        return None
    n = _head_rows(head_shapes)
    if n is None:
        return None
    config = dict(base_config)
    archs = config.get("architectures") or []
    if archs:
        config["architectures"] = [_arch(str(a)) for a in archs]
    head = _record_head(inputs)
    if head is not None and int(head.get("num_labels", -1)) == n:
        id2label = {str(k): str(v) for k, v in (head.get("id2label") or {}).items()}
        if head.get("problem_type"):
            config["problem_type"] = head["problem_type"]
    else:
        id2label = {}
    if len(id2label) != n:
        id2label = {str(i): f"LABEL_{i}" for i in range(n)}
    config["id2label"] = id2label
    config["label2id"] = {v: int(k) for k, v in id2label.items()}
    config.pop("num_labels", None)  # transformers derives it from id2label
    return config
