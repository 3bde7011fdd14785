"""Merge methods beyond linear arithmetic: TIES, DARE, magnitude pruning (docs/SPEC.md, "Merge
methods"), in numpy, on the signed task vectors of one layer.

Each kind turns a layer of its inputs into task vectors ``tau_i`` (LoRA:
``tau_i = c_i s_i B_i A_i``; (IA)3: ``tau_i = c_i (l_i - 1)``), so a negative coefficient flips a
module's vote. :func:`merge` then applies exactly the function of the same name in PEFT's
``peft.utils.merge_utils`` to ``[tau_i]`` with unit weights:

- ``linear``:          ``sum_i tau_i``
- ``magnitude_prune``: ``sum_i prune_magnitude(tau_i, d)``
- ``ties``:            ``disjoint_merge([prune_magnitude(tau_i, d)], majority_sign)``
- ``dare_linear``:     ``sum_i prune_random(tau_i, d) / d``
- ``dare_ties``:       ``disjoint_merge([prune_random(tau_i, d) / d], majority_sign)``

where ``prune_magnitude`` keeps the ``floor(d * n)`` entries of largest ``|tau|``, ``prune_random``
keeps each entry with probability ``d`` (a Bernoulli mask from numpy's ``Generator``, seeded per
layer from ``seed`` and the layer's name, so the same seed gives the same output), the majority
sign of an entry is ``sign(sum_i tau_i)`` (``total``) or ``sign(sum_i sign(tau_i))``
(``frequency``), ties counting as positive, and ``disjoint_merge`` averages the entries that agree
with it: ``sum_i [sign tau_i = m] tau_i / max(1, sum_i [sign tau_i = m])``. A density of 1 prunes
nothing (as PEFT's ``prune``), so ``dare_*`` with ``d = 1`` are ``linear`` and ``ties``.

The space (``space``): ``dense`` (the default, the reference) takes ``tau_i`` as the layer's
``d_out x d_in`` update, entry by entry as PEFT does. ``core`` (Panariello et al., "Core Space
Merging", NeurIPS 2025) takes it in the small space the stacked factors span: with the reduced
QRs ``[B_1 ... B_n] = Q_B R_B`` and ``[A_1; ...; A_n]^T = Q_A R_A``, every
``tau_i = Q_B M_i Q_A^T`` with the core ``M_i = c_i s_i R_B[:, I_i] R_A[:, I_i]^T`` (``I_i`` the
columns of module ``i``, at most ``sum_i r_i`` square), the method runs on ``[M_i]`` and the
result is ``Q_B M Q_A^T``; no ``d_out x d_in`` matrix is formed. ``linear`` is lossless there
(``sum_i M_i = Q_B^T (sum_i tau_i) Q_A``); the other methods prune and elect signs among core
entries rather than weight entries, so they are different (cheaper) merges, not approximations
of the dense ones. (IA)3 vectors are their own core: both spaces are the same there.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import PemarithError, did_you_mean

METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SIGNS = ("total", "frequency")
SPACES = ("dense", "core")


@dataclass(frozen=True)
class MergeSpec:
    """A merge method and its options (validated on construction)."""

    method: str = "linear"
    density: float | None = None
    majority_sign: str = "total"
    seed: int = 0
    space: str = "dense"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise PemarithError(
                f"unknown merge space {self.space!r}{did_you_mean(self.space, SPACES)}; choose dense or core"
            )
        if self.method not in METHODS:
            raise PemarithError(
                f"unknown merge method {self.method!r}{did_you_mean(self.method, METHODS)}; "
                f"choose one of {', '.join(METHODS)}"
            )
        if self.majority_sign not in SIGNS:
            raise PemarithError(
                f"unknown majority sign method {self.majority_sign!r}; choose total or frequency"
            )
        if self.method == "linear":
            if self.density is not None:
                raise PemarithError(
                    "--density applies to ties, dare_linear, dare_ties and magnitude_prune, not to linear"
                )
            return
        d = self.density
        if d is None:
            raise PemarithError(
                f"method {self.method} needs a density: the share of each task vector "
                "to keep, e.g. --density 0.5 (density=0.5)"
            )
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
            raise PemarithError(f"density must be in (0, 1], got {d!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PemarithError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def is_linear(self) -> bool:
        return self.method == "linear"

    @property
    def on_task_vectors(self) -> bool:
        """Whether the layers are merged from their task vectors (every method but linear
        arithmetic in dense space, which is the modes' own rule on the factors)."""
        return not (self.is_linear and self.space == "dense")

    def describe(self) -> dict[str, object]:
        """For provenance: the method and the options that apply to it."""
        if self.is_linear:
            return {"method": "linear", "space": "core"} if self.space == "core" else {"method": "linear"}
        out: dict[str, object] = {"method": self.method, "density": self.density}
        if "ties" in self.method:
            out["majority_sign"] = self.majority_sign
        if self.method.startswith("dare"):
            out["seed"] = self.seed
        out["space"] = self.space
        return out


def prune_magnitude(tau: np.ndarray, density: float) -> np.ndarray:
    """Keep the ``floor(density * n)`` entries of largest magnitude (PEFT's
    ``magnitude_based_pruning``); ``density >= 1`` keeps everything."""
    if density >= 1:
        return tau
    k = int(density * tau.size)
    flat = np.abs(tau).reshape(-1)
    mask = np.zeros(tau.size, dtype=bool)
    if k > 0:
        mask[np.argpartition(flat, tau.size - k)[tau.size - k :]] = True
    return tau * mask.reshape(tau.shape)


def prune_random(tau: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Keep each entry with probability ``density`` and divide by it (PEFT's ``random_pruning``
    with ``rescale=True``); ``density >= 1`` keeps everything."""
    if density >= 1:
        return tau
    return tau * (rng.random(tau.shape) < density) / density


def majority_sign_mask(stacked: np.ndarray, method: str = "total") -> np.ndarray:
    """``sign(tau_i) == m`` with ``m = sign(sum_i tau_i)`` (``total``) or
    ``sign(sum_i sign(tau_i))`` (``frequency``), 0 counting as +1 (PEFT's
    ``calculate_majority_sign_mask``)."""
    sign = np.sign(stacked)
    magnitude = stacked.sum(axis=0) if method == "total" else sign.sum(axis=0)
    majority = np.where(magnitude >= 0, 1.0, -1.0)
    return sign == majority


def disjoint_merge(stacked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``sum_i mask_i tau_i / max(1, sum_i mask_i)`` (PEFT's ``disjoint_merge``)."""
    return (stacked * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1.0)


def layer_rng(seed: int, layer: str) -> np.random.Generator:
    """The Generator of one layer: seeded from ``seed`` and the layer's name, so that a layer's
    mask does not depend on which other layers are merged or in which order."""
    return np.random.default_rng([seed, zlib.crc32(layer.encode())])


def merge(taus: Sequence[np.ndarray], spec: MergeSpec, layer: str = "") -> np.ndarray:
    """The merged task vector of one layer (float64); see the module docstring."""
    if spec.is_linear:
        return np.sum(taus, axis=0)
    d = float(spec.density)  # type: ignore[arg-type]  # validated: not None for these methods
    if spec.method in ("ties", "magnitude_prune"):
        pruned = np.stack([prune_magnitude(t, d) for t in taus])
    else:
        rng = layer_rng(spec.seed, layer)
        pruned = np.stack([prune_random(t, d, rng) for t in taus])
    if spec.method.endswith("ties"):
        return disjoint_merge(pruned, majority_sign_mask(pruned, spec.majority_sign))
    return pruned.sum(axis=0)
