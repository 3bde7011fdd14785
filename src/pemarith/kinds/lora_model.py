"""LoRA's rules that touch a model: the merge into a base weight (``bake``) and the writing of a
composition into a live PEFT adapter (the in-place sweep, :mod:`pemarith.hf.inplace`).

Part of LoRA's row in :data:`pemarith.kinds.KINDS` with :mod:`.lora` (what the rules receive is
documented there and in :class:`pemarith.kinds.Kind`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CompatibilityError
from .live import config_differences
from .lora import A_PARTS, B_FOR_A, scaling, split_key

_MERGE_BLOCK = 1 << 18  # elements of the update formed at a time by merge_into (1 MiB of float32)
# Config fields that change what a weight means: they must agree between a live adapter and a
# composition written into it (r, lora_alpha and use_rslora are reconciled by padding, scaling).
LIVE_FIXED = (
    "target_modules",
    "modules_to_save",
    "fan_in_fan_out",
    "use_dora",
    "bias",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "lora_bias",
)


def merge_into(
    parts: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    weight: np.ndarray,
    key: str,
    shape: tuple[int, ...] | None = None,
    start: int = 0,
) -> np.ndarray:
    """``W += s B A``, in place in ``weight`` (a float32 or float64 array the caller owns), which
    is returned. ``weight`` may be a block of rows of ``W`` (``shape``: all of ``W``'s; the block
    starts at row ``start``): ``W[i:j] += (s B)[i:j] @ A`` needs only those rows of ``B``.

    The update is transposed for embeddings (whose weight is ``num_embeddings x dim``) and for
    ``fan_in_fan_out`` layers (GPT-2's Conv1D stores ``in x out``), as PEFT's own merge does:
    ``W += (s A^T) B^T``. The product is formed once, in ``weight``'s dtype, a block of rows at a
    time, so no full-size temporary is made.
    """
    a_part = next(p for p in A_PARTS if p in parts)
    B, A = parts[B_FOR_A[a_part]], parts[a_part]
    transposed = a_part == "lora_embedding_A" or bool(config.get("fan_in_fan_out"))
    left, right = (A.T, B.T) if transposed else (B, A)
    full = (left.shape[0], right.shape[1])
    if full != tuple(shape or weight.shape) or weight.shape[1:] != full[1:] or start + len(weight) > full[0]:
        raise CompatibilityError(
            f"{key}: the LoRA update has shape {full} but the base weight "
            f"has {tuple(shape or weight.shape)}; is this the adapter's base model?"
        )
    # an overflow (inf) is no warning here: the caller refuses a non-finite result by name
    with np.errstate(over="ignore", invalid="ignore"):
        left = np.ascontiguousarray(scaling(config) * left[start : start + len(weight)], dtype=weight.dtype)
        right = np.ascontiguousarray(right, dtype=weight.dtype)
        rows = max(1, _MERGE_BLOCK // max(1, full[1]))
        for i in range(0, len(weight), rows):
            weight[i : i + rows] += left[i : i + rows] @ right
    return weight


def merge_bias(
    parts: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    bias: np.ndarray,
    weight_shape: tuple[int, ...],
    key: str,
) -> None:
    """None: LoRA leaves the bias as it is."""
    return None


def live_check(live: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why a composition with adapter config ``new`` does not fit a live adapter built from
    ``live`` (the caller then rebuilds it from ``new``): a fixed field differs, or ``new``'s rank
    is larger. ``rank_pattern``/``alpha_pattern`` fit no live adapter: ``CompatibilityError``."""
    for key in ("rank_pattern", "alpha_pattern"):
        if live.get(key) or new.get(key):
            raise CompatibilityError(
                f"cannot write this composition into the live adapter: {key} is not supported in place"
            )
    out = config_differences(LIVE_FIXED, live, new)
    if int(new["r"]) > int(live["r"]):
        out.append(f"rank {new['r']} > live rank {live['r']}")
    return out


def live_tensor(key: str, live: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[float, int | None]:
    """How the saved tensor ``key`` of a composition with config ``new`` is written into a live
    adapter built from ``live`` (which :func:`live_check` accepts): ``(factor, pad_dim)``.

    ``B`` takes ``s_new / s_live``, so ``s_live B' A == s_new B A``; a lower-rank factor is
    zero-padded up to the live rank, ``A`` on its rows (dim 0), ``B`` on its columns (dim 1):
    zero rows of ``A`` and columns of ``B`` add nothing to ``B A``. Other tensors
    (``modules_to_save``): ``(1.0, None)``, written as they are."""
    part = (split_key(key) or ("", ""))[1]
    if part in A_PARTS:
        return 1.0, 0
    if part in B_FOR_A.values():
        return scaling(new) / scaling(live), 1
    return 1.0, None
