"""Whether adapters compose: the input check of a composition, which depends on the adapters,
the mode, rank and merge method, never on the coefficients (so :class:`~pemarith.module.PEM`
runs it once per set of adapters, see ``PEM._check_inputs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .base_names import same_base
from .errors import CompatibilityError, PemarithError, did_you_mean

if TYPE_CHECKING:
    from .io import Adapter
    from .methods import MergeSpec


def check_adapters(
    names: list[str],
    ads: Mapping[str, Adapter],
    mode: str,
    rank: int | None,
    method: MergeSpec | None,
    base_model: str | None,
) -> None:
    """Raise ``CompatibilityError`` (naming the modules and the difference) unless the adapters
    ``ads[n]`` compose in ``mode``: same PEFT type, base model (unless ``base_model`` names one),
    adapted layers, ``modules_to_save`` and frozen copies, the kind's rules, and shapes."""
    first, a0 = names[0], ads[names[0]]
    if mode not in a0.kind.modes:
        raise PemarithError(
            f"unknown mode {mode!r}{did_you_mean(mode, a0.kind.modes)}; "
            f"choose one of {', '.join(a0.kind.modes)}"
        )
    for n in names[1:]:
        a = ads[n]
        # The layers actually adapted are compared, not target_modules: PEFT writes
        # "all-linear" as the list of full module paths it matched.
        if a0.peft_type != a.peft_type:
            raise CompatibilityError(
                f"{first!r} and {n!r} have different PEFT type: {a0.peft_type!r} vs {a.peft_type!r}"
            )
        if base_model is None and not same_base(a0.base_model, a.base_model):
            raise CompatibilityError(
                f"{first!r} and {n!r} have different base model: {a0.base_model!r} vs {a.base_model!r}; "
                "if they are the same weights, pass base_model=NAME (--base-model NAME) to record NAME"
            )
        _same_keys(first, set(a0.layers), n, set(a.layers), "adapts")
        _same_keys(first, set(a0.extra), n, set(a.extra), "saves (modules_to_save)")
        _same_keys(first, set(a0.frozen), n, set(a.frozen), "saves base weights (save_embedding_layers)")
        for key in a0.frozen:
            if a0.dtypes[key] != a.dtypes[key] or not np.array_equal(a0.tensor(key), a.tensor(key)):
                raise CompatibilityError(
                    f"{key!r}: {first!r} and {n!r} hold different copies of this frozen base weight "
                    "(save_embedding_layers); they were not trained on the same base model"
                )
    if method is None or not method.on_task_vectors:
        a0.kind.check(dict(ads), mode, rank)  # before shapes: "ranks differ" says more than shapes
    else:
        name = method.method if method.space == "dense" else f"{method.method} in core space"
        a0.kind.check_method(dict(ads), mode, rank, name)
    for n in names[1:]:
        a = ads[n]
        for layer in a0.layers:
            s0, s = a0.kind.signature(a0, layer, mode), a.kind.signature(a, layer, mode)
            if s0 != s:
                diff = "; ".join(f"{k} {s0[k]} vs {s[k]}" for k in s0 if s0[k] != s.get(k))
                raise CompatibilityError(f"module {layer!r}: {first!r} and {n!r} differ in shape: {diff}")
        for key in a0.extra:
            if a0.shapes[key] != a.shapes[key]:
                raise CompatibilityError(
                    f"{key!r}: {first!r} has shape {a0.shapes[key]} but {n!r} has {a.shapes[key]}"
                )


def _same_keys(n0: str, k0: set[str], n: str, k: set[str], verb: str) -> None:
    if k0 != k:
        only0, only = sorted(k0 - k), sorted(k - k0)
        parts = (
            [f"only {n0!r} {verb} {', '.join(only0[:5])}" + (" ..." if len(only0) > 5 else "")]
            if only0
            else []
        )
        parts += (
            [f"only {n!r} {verb} {', '.join(only[:5])}" + (" ..." if len(only) > 5 else "")] if only else []
        )
        raise CompatibilityError(f"{n0!r} and {n!r} differ in modules: {'; '.join(parts)}")
