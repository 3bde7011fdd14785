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

from ..dtypes import values
from ..errors import AdapterError, CompatibilityError
from .live import config_differences

if TYPE_CHECKING:
    from ..io import Adapter

NAME = "IA3"
MODES = ("factorwise", "exact")
_PART = "ia3_l"
# Config fields that must agree between a live adapter and a composition written into it.
LIVE_FIXED = (
    "target_modules",
    "feedforward_modules",
    "modules_to_save",
    "fan_in_fan_out",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
)


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


def out_shapes(
    adapters: Sequence[Adapter], layer: str, mode: str, rank: int | None
) -> dict[str, tuple[int, ...]]:
    return {_PART: adapters[0].shapes[adapters[0].layers[layer][_PART]]}


def combine(
    tensors: Sequence[Mapping[str, np.ndarray]],
    coefs: Sequence[float],
    adapters: Sequence[Adapter],
    mode: str,
    rank: int | None,
) -> tuple[dict[str, np.ndarray], float | None]:
    """``l_out = 1 + sum_i c_i (l_i - 1)`` (as stored in, float64 out)."""
    delta = np.asarray(sum(c * (values(t[_PART]).astype(np.float64) - 1.0) for c, t in zip(coefs, tensors)))
    return {_PART: 1.0 + delta}, None


def check_method(adapters: Mapping[str, Adapter], mode: str, rank: int | None, method: str) -> None:
    """Merge methods run on the vectors themselves: ``rank`` does not apply (``mode`` neither)."""
    check(adapters, mode, rank)


def task_vectors(
    tensors: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float], adapters: Sequence[Adapter]
) -> list[np.ndarray]:
    """``tau_i = c_i (l_i - 1)``."""
    return [c * (t[_PART] - 1.0) for c, t in zip(coefs, tensors)]


def from_task_vector(
    merged: np.ndarray, tensors: Sequence[Mapping[str, np.ndarray]], rank: int | None
) -> tuple[dict[str, np.ndarray], None]:
    """``l = 1 + merged``."""
    return {_PART: 1.0 + merged}, None


def core_vectors(
    tensors: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float], adapters: Sequence[Adapter]
) -> tuple[list[np.ndarray], None]:
    """The vectors are their own core space: :func:`task_vectors`, no basis."""
    return task_vectors(tensors, coefs, adapters), None


def from_core(
    merged: np.ndarray, basis: None, tensors: Sequence[Mapping[str, np.ndarray]], rank: int | None
) -> tuple[dict[str, np.ndarray], None]:
    """As :func:`from_task_vector`: ``l = 1 + merged``."""
    return from_task_vector(merged, tensors, rank)


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


def factorwise_terms(
    tensors: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float], adapters: Sequence[Adapter]
) -> None:
    """None: the (IA)3 rule ``1 + sum_i c_i (l_i - 1)`` has no cross terms in either mode."""
    return None


def _scales_output(vec: np.ndarray, config: Mapping[str, Any], shape: tuple[int, ...], key: str) -> bool:
    """Whether ``l`` scales the layer's output (shape ``(out, 1)``) rather than a feedforward
    layer's input (``(1, in)``); ``shape`` is the base weight's (``in x out`` if fan_in_fan_out)."""
    if len(shape) != 2:
        raise CompatibilityError(f"{key}: (IA)3 on a {len(shape)}-d weight is not supported")
    out_features, in_features = shape[::-1] if config.get("fan_in_fan_out") else shape
    if vec.shape == (out_features, 1):
        return True
    if vec.shape == (1, in_features):
        return False
    raise CompatibilityError(
        f"{key}: the (IA)3 vector has shape {vec.shape} but the base weight is "
        f"{out_features} x {in_features}; is this the adapter's base model?"
    )


def merge_into(
    parts: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    weight: np.ndarray,
    key: str,
    shape: tuple[int, ...] | None = None,
    start: int = 0,
) -> np.ndarray:
    """PEFT's (IA)3 merge, in place in ``weight`` (float32 or float64, owned by the caller), which
    is returned: an output scaling ``l`` (shape ``(out, 1)``) scales the rows, ``W' = l W``; a
    feedforward layer's input scaling (``(1, in)``) the columns, ``W' = W l``.
    ``fan_in_fan_out`` weights (``in x out``) are scaled the same way, transposed. ``weight`` may
    be a block of rows of ``W`` (``shape``: all of ``W``'s; the block starts at row ``start``)."""
    vec = parts[_PART]
    shape = tuple(shape or weight.shape)
    _scales_output(vec, config, shape, key)
    if weight.shape[1:] != shape[1:] or start + len(weight) > shape[0]:
        raise CompatibilityError(
            f"{key}: rows {start}:{start + len(weight)} of shape {weight.shape[1:]} "
            f"are not a block of the base weight's {shape}"
        )
    factor = vec.T if config.get("fan_in_fan_out") else vec  # in W's orientation: (rows, 1) or (1, cols)
    if factor.shape[0] != 1:
        factor = factor[start : start + len(weight)]
    weight *= factor.astype(weight.dtype)
    return weight


def merge_bias(
    parts: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    bias: np.ndarray,
    weight_shape: tuple[int, ...],
    key: str,
) -> np.ndarray | None:
    """``b' = l b`` for an output scaling (the bias is inside the scaled output); None (unchanged)
    for a feedforward layer's input scaling."""
    vec = parts[_PART]
    return bias * vec.reshape(bias.shape) if _scales_output(vec, config, weight_shape, key) else None


def live_check(live: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why a composition with adapter config ``new`` does not fit a live adapter built from
    ``live`` (the caller rebuilds it): a field of :data:`LIVE_FIXED` differs."""
    return config_differences(LIVE_FIXED, live, new)


def live_tensor(key: str, live: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[float, int | None]:
    """``(1.0, None)``: an (IA)3 tensor is written into a live adapter as it is (same shape)."""
    return 1.0, None


def describe(adapter: Adapter) -> dict[str, Any]:
    return {"feedforward_modules": adapter.config.get("feedforward_modules")}
