"""Which base model an adapter names (``base_model_name_or_path``), compared by identity.

The short names of the packaged models (``minilm``, ``smollm2``, ``gemma3-270m``: see
``pemarith.hf.models``) stand for the hub repositories their weights come from; pemarith's
modules record the hub id, earlier ones the short name. Two names are the same base when they
are equal after this mapping and after dropping a trailing ``/``. Anything else that differs is a
different base, unless the user says otherwise (``compose(..., base_model=NAME)``,
``--base-model``). Numpy-free and model-free: the core imports it.
"""

from __future__ import annotations

#: short name -> the hub repository the packaged weights are (one table; hf.models reads it).
HUB_IDS: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
}


def canonical(name: str | None) -> str | None:
    """``name`` as the hub id it stands for (a short name), else as given, without a trailing /."""
    if name is None:
        return None
    name = name.rstrip("/") or name
    return HUB_IDS.get(name, name)


def same_base(a: str | None, b: str | None) -> bool:
    return canonical(a) == canonical(b)
