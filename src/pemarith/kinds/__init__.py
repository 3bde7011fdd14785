"""One small table of plain functions per module kind, keyed by PEFT's ``peft_type``.

Everything kind-specific lives in ``lora.py`` and ``ia3.py``; the rest of pemarith looks the
rules up here (``KINDS[adapter.config["peft_type"]]``) and never branches on the kind itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import ia3, lora, lora_core, lora_model


@dataclass(frozen=True)
class Kind:
    """The rules of one kind (see ``lora.py`` for what each function receives and returns).

    - ``split_key(key) -> (layer, part) | None``: an adapter tensor, or None for a
      ``modules_to_save`` tensor.
    - ``validate_config(config, path)`` / ``validate_layout(adapter)``: refuse unsupported
      variants by name (``AdapterError``).
    - ``check(adapters, mode, rank)``: kind-specific compatibility (``CompatibilityError``).
    - ``signature(adapter, layer, mode) -> {what: shape}``: what must agree across inputs.
    - ``out_shapes(adapters, layer, mode, rank) -> {part: shape}``: output parts, write order.
    - ``combine(tensors, coefs, adapters, mode, rank) -> ({part: array}, svd_error | None)``:
      ``tensors`` as stored (``pemarith.dtypes.STORED``: bfloat16 as its uint16 bits;
      ``dtypes.values`` decodes); it widens what it computes with, and its outputs (float
      arrays, or bfloat16 bits passed through) are rounded to the output dtype once, by the writer.
    - ``output_config(config, adapters, mode, rank) -> dict``: the result's adapter_config.json.
    - ``update_norm(adapter, layer) -> float`` and ``describe(adapter) -> dict``: for inspect.
    - ``gram(tensors, adapters) -> (n, n) array`` and
      ``factorwise_terms(tensors, coefs, adapters) -> {name: norm^2 or inner} | None``: for
      ``diagnostics`` (None where factorwise equals exact, or does not apply).
    - ``merge_into(parts, config, weight, key, shape=None, start=0) -> weight`` (in place in
      ``weight``, a float32 or float64 array the caller owns: all of the base weight, or its rows
      ``start:start + len(weight)`` of a weight of ``shape``) and
      ``merge_bias(parts, config, bias, weight_shape, key) -> bias | None`` (None: unchanged):
      one layer's update applied to the base model's weights (``bake``).
    - ``live_check(live_config, new_config) -> [why not]`` and
      ``live_tensor(key, live_config, new_config) -> (factor, pad_dim | None)``: writing a
      composition into a live PEFT adapter (``hf.inplace``): what must agree (else the adapter is
      rebuilt), and how each saved tensor is scaled and zero-padded into the live one.
    - ``check_method(adapters, mode, rank, method)``: compatibility for a merge method other than
      linear (``pemarith.methods``), ``task_vectors(tensors, coefs, adapters) -> [tau_i]`` (the
      signed dense update of one layer per module) and
      ``from_task_vector(merged, tensors, rank) -> ({part: array}, error | None)``; in core
      space, ``core_vectors(tensors, coefs, adapters) -> ([core_i], basis)`` and
      ``from_core(merged, basis, tensors, rank)`` (same result as ``from_task_vector``).
    """

    name: str
    modes: tuple[str, ...]
    split_key: Callable[..., Any]
    validate_config: Callable[..., Any]
    validate_layout: Callable[..., Any]
    check: Callable[..., Any]
    signature: Callable[..., Any]
    out_shapes: Callable[..., Any]
    combine: Callable[..., Any]
    output_config: Callable[..., Any]
    update_norm: Callable[..., Any]
    describe: Callable[..., Any]
    gram: Callable[..., Any]
    factorwise_terms: Callable[..., Any]
    merge_into: Callable[..., Any]
    merge_bias: Callable[..., Any]
    live_check: Callable[..., Any]
    live_tensor: Callable[..., Any]
    check_method: Callable[..., Any]
    task_vectors: Callable[..., Any]
    from_task_vector: Callable[..., Any]
    core_vectors: Callable[..., Any]
    from_core: Callable[..., Any]

    def __repr__(self) -> str:
        return f"Kind({self.name!r}, modes={self.modes!r})"

    @classmethod
    def from_modules(cls, *mods: ModuleType) -> Kind:
        """The rules named by the fields, found in ``mods`` (the first that has each)."""

        def rule(name: str) -> Any:
            return next(getattr(m, name) for m in mods if hasattr(m, name))

        return cls(
            name=mods[0].NAME,
            modes=mods[0].MODES,
            **{f: rule(f) for f in cls.__dataclass_fields__ if f not in ("name", "modes")},
        )


KINDS: dict[str, Kind] = {
    k.name: k for k in (Kind.from_modules(lora, lora_model, lora_core), Kind.from_modules(ia3))
}

__all__ = ["KINDS", "Kind"]
