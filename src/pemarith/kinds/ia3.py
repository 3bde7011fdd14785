"""(IA)3: h = l (.) h, one learned vector ``l`` per adapted layer.

Arithmetic on the offset from the identity (SPEC.md): ``l_out = 1 + sum_i c_i (l_i - 1)``.
This is the paper's negation ``2 - l`` (eq. 7) and its convex combinations, and keeps the
identity at 1 (``a - a`` gives ``l = 1``). Both modes compute the same thing; ``rank`` does not
apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AdapterError, CompatibilityError

if TYPE_CHECKING:
    from ..io import Adapter

NAME = "IA3"
MODES = ("factorwise", "exact")
_PART = "ia3_l"


def split_key(key: str) -> tuple[str, str] | None:
    """``"m.k_proj.ia3_l"`` -> ``("m.k_proj", "ia3_l")``; None for other keys."""
    layer, _, part = key.rpartition(".")
    return (layer, part) if part == _PART and layer else None


def validate_config(config: Mapping[str, Any], path: Path) -> None:
    # (IA)3 has no variants in PEFT that change what ``l`` means.
    return None


def validate_layout(adapter: Adapter) -> None:
    for key in adapter.extra:
        if "ia3_" in key:
            raise AdapterError(f"{adapter.weights_path}: unsupported (IA)3 tensor {key!r}")


def check(adapters: Mapping[str, Adapter], mode: str, rank: int | None) -> None:
    if rank is not None:
        raise CompatibilityError("rank= applies to LoRA adapters only; (IA)3 vectors have no rank")
    names = list(adapters)
    ff0 = _ff(adapters[names[0]])
    for n in names[1:]:
        ff = _ff(adapters[n])
        if ff != ff0:
            raise CompatibilityError(
                f"(IA)3 feedforward_modules differ: {names[0]!r} has {sorted(ff0)} but {n!r} has {sorted(ff)}"
            )


def _ff(adapter: Adapter) -> set[str] | str:
    ff = adapter.config.get("feedforward_modules") or []
    return ff if isinstance(ff, str) else set(ff)


def signature(adapter: Adapter, layer: str, mode: str) -> dict[str, tuple[int, ...]]:
    return {"l": adapter.shapes[adapter.layers[layer][_PART]]}


def out_shapes(adapters: Sequence[Adapter], layer: str, mode: str, rank: int | None) -> dict[str, tuple[int, ...]]:
    return {_PART: adapters[0].shapes[adapters[0].layers[layer][_PART]]}


def combine(
    tensors: Sequence[Mapping[str, np.ndarray]],
    coefs: Sequence[float],
    adapters: Sequence[Adapter],
    mode: str,
    rank: int | None,
) -> tuple[dict[str, np.ndarray], float | None]:
    """``l_out = 1 + sum_i c_i (l_i - 1)`` (float64 in and out)."""
    delta = sum(c * (t[_PART] - 1.0) for c, t in zip(coefs, tensors))
    return {_PART: 1.0 + delta}, None


def output_config(
    config: Mapping[str, Any], adapters: Sequence[Adapter], mode: str, rank: int | None
) -> dict[str, Any]:
    return dict(config)


def update_norm(adapter: Adapter, layer: str) -> float:
    """``||l - 1||_F``."""
    vec = adapter.tensor(adapter.layers[layer][_PART]).astype(np.float64)
    return float(math.sqrt(np.sum((vec - 1.0) ** 2)))


def gram(tensors: Sequence[Mapping[str, np.ndarray]], adapters: Sequence[Adapter]) -> np.ndarray:
    """``G_ij = <l_i - 1, l_j - 1>`` for one layer: the offsets from the identity. (The weight
    update ``diag(l - 1) W`` would weight them by the base weights, which are not read.)"""
    D = np.stack([(t[_PART] - 1.0).ravel() for t in tensors])
    return D @ D.T


def factorwise_terms(tensors: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float],
                     adapters: Sequence[Adapter]) -> None:
    """None: the (IA)3 rule ``1 + sum_i c_i (l_i - 1)`` has no cross terms in either mode."""
    return None


def describe(adapter: Adapter) -> dict[str, Any]:
    return {"feedforward_modules": adapter.config.get("feedforward_modules")}
