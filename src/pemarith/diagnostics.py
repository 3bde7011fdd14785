"""Diagnostics without a base model: how alike modules are, and how a composition's terms interfere.

In each adapted layer, module ``i`` has an update ``D_i`` (LoRA: ``s_i B_i A_i``; (IA)3: the
offset ``l_i - 1`` from the identity). Everything comes from one Gram matrix per layer,
``G_ij = <D_i, D_j>_F``, which the kind computes from the factors (LoRA:
``s_i s_j sum((B_i^T B_j) * (A_i A_j^T))``; the dense ``B A`` is never formed), one layer at a
time. For a composition ``sum_i c_i theta_i``:

- **cosine similarity** ``cos_ij = G_ij / sqrt(G_ii G_jj)``, per layer, and over the whole
  module from the Gram matrices summed over layers (the cosine of the flattened updates);
- **retained norm** ``||sum_i c_i D_i|| / sum_i |c_i| ||D_i|| = sqrt(c^T G c) / sum_i |c_i|
  sqrt(G_ii)``, in ``[0, 1]``: 1 when the weighted updates point the same way, near 0 when they
  cancel (destructive interference);
- **the factorwise result against the exact one** (LoRA, equal ranks): the paper's factorwise
  update is ``F = sum_ij c_i |c_j| s_i B_i A_j``, the exact one ``E = sum_i c_i D_i``. Reported
  are ``cos(F, E)`` (1: factorwise only rescales the exact update; lower: it points elsewhere)
  and the cross-term ratio ``||sum_{i != j} c_i |c_j| s_i B_i A_j|| / ||sum_i c_i |c_i| s_i B_i A_i||``.
  Modules that share LoRA's ``A`` initialisation keep ``A_i`` close, so ``B_i A_j`` is close to
  ``B_i A_i`` and ``cos(F, E)`` near 1; with different initialisations the cross terms are
  products of unrelated factors (the paper's section 4.7).

``modules_to_save`` (full head weights) are not compared: without the base model's copy they
are not updates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from .construct import load
from .errors import CompatibilityError
from .module import PEM, layer_tensors


def _cosine(G: np.ndarray) -> np.ndarray:
    """``G_ij / sqrt(G_ii G_jj)``; 0 where a module's update is zero (it has no direction)."""
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    denom = np.outer(norms, norms)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, G / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(cos, -1.0, 1.0)


def _retained(G: np.ndarray, c: np.ndarray) -> float | None:
    whole = float(np.sum(np.abs(c) * np.sqrt(np.clip(np.diag(G), 0.0, None))))
    if whole == 0:
        return None
    return math.sqrt(max(float(c @ G @ c), 0.0)) / whole


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` measured. ``gram[layer]`` is that layer's ``G`` (rows and columns in
    the order of ``names``); ``factorwise[layer]`` holds the squared norms and the inner product
    of the factorwise result's parts (``kinds.lora.factorwise_terms``), absent where factorwise
    does not apply or equals exact ((IA)3, LoRA ranks that differ)."""

    names: tuple[str, ...]
    coefs: tuple[float, ...]
    kind: str
    gram: dict[str, np.ndarray]
    factorwise: dict[str, dict[str, float]] = field(default_factory=dict)

    def __repr__(self) -> str:
        fw = ", factorwise" if self.factorwise else ""
        terms = ", ".join(f"{c:g}*{n}" for n, c in zip(self.names, self.coefs))
        return f"Diagnosis({self.kind}, {len(self.gram)} layers, {terms}{fw})"

    @property
    def total_gram(self) -> np.ndarray:
        """``sum over layers of G``: the Gram matrix of the flattened whole-module updates."""
        return sum(self.gram.values(), np.zeros((len(self.names),) * 2))

    def norms(self, layer: str | None = None) -> dict[str, float]:
        """``||D_i||_F``, of one layer or of the whole module."""
        G = self.total_gram if layer is None else self.gram[layer]
        return {n: math.sqrt(max(float(v), 0.0)) for n, v in zip(self.names, np.diag(G))}

    def cosine(self, layer: str | None = None) -> np.ndarray:
        """The cosine similarity matrix, of one layer or of the whole module."""
        return _cosine(self.total_gram if layer is None else self.gram[layer])

    def pair_cosines(self, i: str, j: str) -> dict[str, float]:
        """``cos_ij`` in every layer."""
        a, b = self.names.index(i), self.names.index(j)
        return {layer: float(_cosine(G)[a, b]) for layer, G in self.gram.items()}

    def retained(self, layer: str | None = None) -> float | None:
        """``||sum c_i D_i|| / sum |c_i| ||D_i||`` (None when every update is zero)."""
        G = self.total_gram if layer is None else self.gram[layer]
        return _retained(G, np.asarray(self.coefs))

    def _fw(self, layer: str | None) -> dict[str, float] | None:
        if layer is not None:
            return self.factorwise.get(layer)
        if not self.factorwise or len(self.factorwise) != len(self.gram):
            return None
        return {k: sum(t[k] for t in self.factorwise.values()) for k in next(iter(self.factorwise.values()))}

    def cross_ratio(self, layer: str | None = None) -> float | None:
        """``||cross terms|| / ||own terms||`` of the factorwise result (None where it does not
        apply, or the own terms are zero)."""
        t = self._fw(layer)
        return math.sqrt(max(t["cross"], 0.0) / t["own"]) if t and t["own"] > 0 else None

    def factorwise_cosine(self, layer: str | None = None) -> float | None:
        """``cos(F, E)``: the factorwise update against the exact one (None where it does not
        apply, or either is zero)."""
        t = self._fw(layer)
        if not t or t["factorwise"] <= 0 or t["exact"] <= 0:
            return None
        return max(-1.0, min(1.0, t["factorwise.exact"] / math.sqrt(t["factorwise"] * t["exact"])))

    def to_json(self) -> dict[str, object]:
        cos = self.cosine()
        layers = {}
        for layer in self.gram:
            row: dict[str, object] = {"norms": self.norms(layer), "retained": self.retained(layer)}
            if len(self.names) > 1:
                c = self.cosine(layer)
                row["cosine"] = {
                    f"{a}~{b}": float(c[i, j])
                    for i, a in enumerate(self.names)
                    for j, b in enumerate(self.names)
                    if i < j
                }
            if self.factorwise:
                row["factorwise_cosine"] = self.factorwise_cosine(layer)
                row["cross_ratio"] = self.cross_ratio(layer)
            layers[layer] = row
        return {
            "kind": self.kind,
            "modules": list(self.names),
            "coefficients": dict(zip(self.names, self.coefs)),
            "norms": self.norms(),
            "cosine": {
                a: {b: float(cos[i, j]) for j, b in enumerate(self.names)} for i, a in enumerate(self.names)
            },
            "retained": self.retained(),
            "factorwise_cosine": self.factorwise_cosine(),
            "cross_ratio": self.cross_ratio(),
            "layers": layers,
        }


def diagnose(modules: PEM | Mapping[str, str | os.PathLike[str]]) -> Diagnosis:
    """Measure a composition (a PEM, whose coefficients the interference measures use) or a
    set of modules ``{name: path}`` (coefficients 1), from the adapter files alone.

    The modules must adapt the same layers with updates of the same shapes (ranks may differ).
    """
    if not isinstance(modules, PEM):
        if not modules:
            raise CompatibilityError("nothing to diagnose: give at least one module")
        modules = cast(PEM, sum(load(p, n) for n, p in modules.items()))
    pem = modules
    names = tuple(pem.terms)
    pem.check(mode="exact", keep=names[0])  # same kind, layers and update shapes; heads ignored
    ads = [pem.adapters[n] for n in names]
    coefs = [pem.terms[n] for n in names]
    kind = pem.kind
    gram: dict[str, np.ndarray] = {}
    factorwise: dict[str, dict[str, float]] = {}
    for layer in ads[0].layers:
        tensors = layer_tensors(ads, layer)
        gram[layer] = kind.gram(tensors, ads)
        terms = kind.factorwise_terms(tensors, coefs, ads)
        if terms is not None:
            factorwise[layer] = terms
    return Diagnosis(names, tuple(coefs), kind.name, gram, factorwise)
