"""LoRA: h = W x + s * B A x, with s = lora_alpha / r (or lora_alpha / sqrt(r) under rsLoRA).

Two modes (SPEC.md):

- ``factorwise`` (the paper's eq. 3, 6, 8): arithmetic on the factors,
  ``A = sum_i |c_i| A_i``, ``B = sum_i c_i (s_i / s_out) B_i``, with ``s_out`` the scaling of
  the first module. Negation is ``{A, -B}``; ``c*t`` alone scales the update by ``c*|c|`` and
  sums carry cross terms ``B_1 A_2``: that is the paper's method. Needs equal ranks.
- ``exact``: ``Delta W = sum_i c_i s_i B_i A_i`` by concatenation along the rank
  (``lowrank.concat``), stored with ``lora_alpha = r`` and no rsLoRA so that ``s_out = 1``;
  with ``rank=R`` it is recompressed by a truncated SVD from the factors (``lowrank.truncate``).

Embedding layers (``lora_embedding_A``/``lora_embedding_B``) follow the same rules: their
update is ``(s * B A)^T`` and every rule above is linear in that product or in the factors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import lowrank
from ..dtypes import scratch, stack_scaled, values
from ..errors import AdapterError, CompatibilityError

if TYPE_CHECKING:
    from ..io import Adapter

NAME = "LORA"
MODES = ("factorwise", "exact")

_KEY = re.compile(
    r"^(?P<layer>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$"
)
A_PARTS = ("lora_A.weight", "lora_embedding_A")
B_FOR_A = {"lora_A.weight": "lora_B.weight", "lora_embedding_A": "lora_embedding_B"}

# Config keys that change what the stored factors mean: composing them as plain LoRA would be
# silently wrong, so each is refused by name when set (non-empty, non-false).
_VARIANTS = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA bias (lora_bias)",
    "rank_pattern": "per-layer ranks (rank_pattern)",
    "alpha_pattern": "per-layer alphas (alpha_pattern)",
    "use_qalora": "QALoRA (use_qalora)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing (arrow_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "velora_config": "VeLoRA (velora_config)",
    "kasa_config": "KaSA (kasa_config)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
}


# init_lora_weights values that only choose the starting factors (the base is untouched, and
# PEFT's load re-runs nothing that matters): plain LoRA. Every other init rewrites the base
# weights (W - s B0 A0) when the adapter is created, and PEFT redoes that on load, so the
# saved factors are not an update of the base: composing them as plain LoRA is wrong.
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")


def _check_init(config: Mapping[str, Any], path: Path) -> None:
    init = config.get("init_lora_weights", True)
    if any(init is v or (isinstance(init, str) and init == v) for v in _PLAIN_INITS):
        return
    name = init.lower() if isinstance(init, str) else None
    if name is not None and (name.startswith(("pissa", "corda")) or name in _BASE_REWRITING_INITS):
        raise AdapterError(
            f"{path}: init_lora_weights={init!r} rewrites the base weights, so these factors are not an "
            "update of the base model and cannot be composed; convert the adapter with PEFT's "
            "save_pretrained(..., path_initial_model_for_weight_conversion=...) and compose the result"
        )
    raise AdapterError(
        f"{path}: unknown init_lora_weights={str(init)[:80]!r} (pemarith composes "
        "True, False, 'gaussian', 'eva', 'orthogonal'); is this a newer PEFT variant?"
    )


def split_key(key: str) -> tuple[str, str] | None:
    """``"m.q_proj.lora_A.weight"`` -> ``("m.q_proj", "lora_A.weight")``; None for other keys."""
    m = _KEY.match(key)
    return (m["layer"], m["part"]) if m else None


def validate_config(config: Mapping[str, Any], path: Path) -> None:
    for key, variant in _VARIANTS.items():
        if config.get(key):
            raise AdapterError(f"{path}: unsupported LoRA variant: {variant}")
    _check_init(config, path)
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{path}: unsupported LoRA variant: trained biases (bias={config['bias']!r})")
    for key in ("r", "lora_alpha"):
        v = config.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise AdapterError(f"{path}: adapter_config.json has an invalid {key}: {v!r}")


def validate_layout(adapter: Adapter) -> None:
    where = adapter.weights_path
    for key in adapter.extra:
        if "lora_" in key:  # e.g. lora_magnitude_vector (DoRA), lora_B.bias (LoRA bias)
            raise AdapterError(f"{where}: unsupported LoRA tensor {key!r}")
    r = adapter.config["r"]
    for layer, parts in adapter.layers.items():
        for a_part, b_part in B_FOR_A.items():
            if (a_part in parts) != (b_part in parts):
                raise AdapterError(f"{where}: module {layer!r} has only one of {a_part} and {b_part}")
        if len(parts) != 2:
            raise AdapterError(f"{where}: module {layer!r} mixes linear and embedding LoRA factors")
        a, b = _a_key(parts), _b_key(parts)
        sa, sb = adapter.shapes[a], adapter.shapes[b]
        if len(sa) != 2 or len(sb) != 2:
            raise AdapterError(
                f"{where}: unsupported LoRA variant: module {layer!r} has {len(sa)}-d factors "
                "(convolution layers are not supported)"
            )
        if sa[0] != r or sb[1] != r:
            raise AdapterError(
                f"{where}: module {layer!r} has rank {sa[0]} (B: {sb[1]}) but adapter_config.json says r={r}"
            )


def _a_key(parts: Mapping[str, str]) -> str:
    return next(parts[p] for p in A_PARTS if p in parts)


def _b_key(parts: Mapping[str, str]) -> str:
    return next(parts[B_FOR_A[p]] for p in A_PARTS if p in parts)


def scaling(config: Mapping[str, Any]) -> float:
    """``s = lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``."""
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _tied_pair(adapter: Adapter) -> tuple[str, str] | None:
    """An embedding LoRA and a linear LoRA whose update is its transpose (``lm_head`` tied to
    ``embed_tokens``) in an adapter trained with ``ensure_weight_tying``; None otherwise."""
    if not adapter.config.get("ensure_weight_tying"):
        return None
    for emb, parts in adapter.layers.items():
        if "lora_embedding_A" not in parts:
            continue
        vocab, dim = (
            adapter.shapes[parts["lora_embedding_A"]][1],
            adapter.shapes[parts["lora_embedding_B"]][0],
        )
        for lin, other in adapter.layers.items():
            if "lora_A.weight" in other and (
                adapter.shapes[other["lora_B.weight"]][0],
                adapter.shapes[other["lora_A.weight"]][1],
            ) == (vocab, dim):
                return emb, lin
    return None


def check(adapters: Mapping[str, Adapter], mode: str, rank: int | None) -> None:
    """Kind-specific compatibility: equal ranks for ``factorwise``; ``rank`` only for ``exact``;
    no tied embedding / lm_head pair (PEFT re-ties their factors on load, which the composed
    factors, scaled differently on A and B, would not survive)."""
    names = list(adapters)
    for n, a in adapters.items():
        pair = _tied_pair(a)
        if pair is not None:
            raise CompatibilityError(
                f"{n!r} adapts the tied {pair[0].rsplit('.', 1)[-1]} and {pair[1].rsplit('.', 1)[-1]} "
                "(ensure_weight_tying): PEFT re-ties their factors on load, which would make the composed "
                "update wrong; train without ensure_weight_tying or without the lm_head target"
            )
    if mode == "factorwise":
        if rank is not None:
            raise CompatibilityError("rank= applies to mode 'exact' only (factorwise keeps the inputs' rank)")
        r0 = adapters[names[0]].config["r"]
        for n in names[1:]:
            r = adapters[n].config["r"]
            if r != r0:
                raise CompatibilityError(
                    f"factorwise mode needs equal ranks: {names[0]!r} has r={r0} but {n!r} has r={r} "
                    "(use mode 'exact' for adapters of different ranks)"
                )
    elif rank is not None:
        total = sum(a.config["r"] for a in adapters.values())
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise CompatibilityError(f"rank must be a positive integer, got {rank!r}")
        if rank > total:
            raise CompatibilityError(
                f"rank={rank} is above the concatenated rank {total} of the inputs; "
                f"use rank <= {total} (or no rank for the lossless result)"
            )


def signature(adapter: Adapter, layer: str, mode: str) -> dict[str, tuple[int, ...]]:
    """What must agree between inputs in one layer: the factor shapes (factorwise), or the
    update's shape ``(d, k)`` (exact, where ranks may differ)."""
    parts = adapter.layers[layer]
    sa, sb = adapter.shapes[_a_key(parts)], adapter.shapes[_b_key(parts)]
    if mode == "factorwise":
        return {"A": sa, "B": sb}
    return {"update (d, k)": (sb[0], sa[1])}


def out_rank(adapters: Sequence[Adapter], mode: str, rank: int | None) -> int:
    if mode == "factorwise":
        return int(adapters[0].config["r"])
    return rank if rank is not None else int(sum(a.config["r"] for a in adapters))


def out_shapes(
    adapters: Sequence[Adapter], layer: str, mode: str, rank: int | None
) -> dict[str, tuple[int, ...]]:
    """Output parts of one layer, in write order (A then B), with their shapes."""
    parts = adapters[0].layers[layer]
    a_part = next(p for p in A_PARTS if p in parts)
    sa, sb = adapters[0].shapes[parts[a_part]], adapters[0].shapes[_b_key(parts)]
    r = out_rank(adapters, mode, rank)
    return {a_part: (r, sa[1]), B_FOR_A[a_part]: (sb[0], r)}


def combine(
    tensors: Sequence[Mapping[str, np.ndarray]],
    coefs: Sequence[float],
    adapters: Sequence[Adapter],
    mode: str,
    rank: int | None,
) -> tuple[dict[str, np.ndarray], float | None]:
    """Combine one layer (factors as stored in) and its SVD error if any.

    factorwise: ``A = sum_i |c_i| A_i``, ``B = sum_i c_i (s_i / s_out) B_i``, ``s_out = s_1``
    (in float64). exact: ``A = [c_1 s_1 A_1; ...; c_n s_n A_n]``, ``B = [B_1, ..., B_n]`` so
    that ``B A = sum_i c_i s_i B_i A_i`` with ``s_out = 1``: ``B`` is the stored factors side
    by side, as stored (bits and all, when the inputs share a dtype: no arithmetic), each
    ``c_i s_i A_i`` is computed in float32 where that is exact, else in float64
    (:func:`pemarith.dtypes.stack_scaled`), and rounded once on writing; truncated to ``rank``
    by SVD (in float64) if given.
    """
    a_part = next(p for p in A_PARTS if p in tensors[0])
    b_part = B_FOR_A[a_part]
    s = [scaling(a.config) for a in adapters]
    As = [t[a_part] for t in tensors]
    Bs = [t[b_part] for t in tensors]
    if mode == "factorwise":
        A = np.asarray(sum(abs(c) * values(Ai).astype(np.float64) for c, Ai in zip(coefs, As)))
        B = np.asarray(
            sum(c * (si / s[0]) * values(Bi).astype(np.float64) for c, si, Bi in zip(coefs, s, Bs))
        )
        return {a_part: A, b_part: B}, None
    # numpy float64 weights (not Python floats, which numpy 2 demotes to float32 with a float32 A)
    weights = [np.float64(c * si) for c, si in zip(coefs, s)]
    if rank is not None:
        B, A = lowrank.concat([values(b) for b in Bs], [values(a) for a in As], weights)
        B, A, err = lowrank.truncate(B.astype(np.float64), A, rank)
        return {a_part: A, b_part: B}, err
    # the result is only written (or copied by iter_tensors' cast) before the next layer: into
    # buffers reused from layer to layer (a fresh 20 MB array per layer costs its page faults)
    if len({b.dtype for b in Bs}) > 1:  # mixed dtypes: side by side as values, not bits
        Bs = [values(b) for b in Bs]
    B = scratch("lora.concat.B", (Bs[0].shape[0], sum(b.shape[1] for b in Bs)), np.result_type(*Bs))
    np.concatenate(Bs, axis=1, out=B)
    return {a_part: stack_scaled(As, weights, "lora.concat.A"), b_part: B}, None


def check_method(adapters: Mapping[str, Adapter], mode: str, rank: int | None, method: str) -> None:
    """A merge method other than linear works on each layer's dense update, which is generally
    not low rank: it needs ``mode="exact"`` and a ``rank`` R <= min(d_out, d_in) of every layer
    (R may exceed the inputs' summed rank; with R = min(d_out, d_in) the result is exact)."""
    if mode != "exact" or rank is None:
        raise CompatibilityError(
            f"method {method} writes a LoRA by a truncated SVD of each layer's merged "
            "update: use --mode exact --rank R (mode='exact', rank=R)"
        )
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise CompatibilityError(f"rank must be a positive integer, got {rank!r}")
    for n, a in adapters.items():
        pair = _tied_pair(a)
        if pair is not None:
            raise CompatibilityError(
                f"{n!r} adapts a tied embedding and lm_head (ensure_weight_tying); "
                "train without ensure_weight_tying or without the lm_head target"
            )
    first = next(iter(adapters.values()))
    for layer, parts in first.layers.items():
        d_out, d_in = first.shapes[_b_key(parts)][0], first.shapes[_a_key(parts)][1]
        if rank > min(d_out, d_in):
            raise CompatibilityError(
                f"rank={rank} is above min(d_out, d_in) = {min(d_out, d_in)} of layer "
                f"{layer!r}; use rank <= {min(d_out, d_in)}"
            )


def task_vectors(
    tensors: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float], adapters: Sequence[Adapter]
) -> list[np.ndarray]:
    """``tau_i = c_i s_i B_i A_i`` of one layer (in the stored orientation ``B A``)."""
    Bs, As = _factors(tensors)
    return [c * scaling(a.config) * (B @ A) for c, a, B, A in zip(coefs, adapters, Bs, As)]


def from_task_vector(
    merged: np.ndarray, tensors: Sequence[Mapping[str, np.ndarray]], rank: int
) -> tuple[dict[str, np.ndarray], float]:
    """The rank-``rank`` factors of ``merged`` by a truncated SVD, ``B = U_R S_R``, ``A = V_R^T``
    (scaling 1, as exact mode writes), and the relative error ``||M - B A||_F / ||M||_F``; a
    rank above that of ``merged`` is padded with zero factors."""
    a_part = next(p for p in A_PARTS if p in tensors[0])
    U, S, Vt = np.linalg.svd(merged, full_matrices=False)
    k = min(rank, S.size)
    A = np.zeros((rank, merged.shape[1]))
    B = np.zeros((merged.shape[0], rank))
    A[:k], B[:, :k] = Vt[:k], U[:, :k] * S[:k]
    total = float(np.sqrt(np.sum(S**2)))
    err = float(np.sqrt(np.sum(S[k:] ** 2)) / total) if total > 0 else 0.0
    return {a_part: A, B_FOR_A[a_part]: B}, err


def output_config(
    config: Mapping[str, Any], adapters: Sequence[Adapter], mode: str, rank: int | None
) -> dict[str, Any]:
    """The first input's config; in exact mode ``r = lora_alpha = output rank`` and no rsLoRA
    (so the scaling is 1, the scalings being folded into the factors)."""
    out = dict(config)
    if mode == "exact":
        r = out_rank(adapters, mode, rank)
        out.update(r=r, lora_alpha=r, use_rslora=False, rank_pattern={}, alpha_pattern={})
    return out


def update_norm(adapter: Adapter, layer: str) -> float:
    """``||s B A||_F`` from the factors: ``sqrt(trace((B^T B)(A A^T)))``, never forming ``B A``.

    In float64, each factor copied into a reused buffer (:func:`pemarith.dtypes.scratch`): the
    same bits as ``astype(np.float64)`` without a fresh allocation per factor (a third of
    inspect's time on a 50 MB adapter went to the page faults of those copies)."""
    parts = adapter.layers[layer]
    A, B = (adapter.tensor(k) for k in (_a_key(parts), _b_key(parts)))
    A64, B64 = scratch("lora.A", A.shape, np.float64), scratch("lora.B", B.shape, np.float64)
    np.copyto(A64, A)
    np.copyto(B64, B)
    return abs(scaling(adapter.config)) * math.sqrt(max(lowrank.inner(B64, A64, B64, A64), 0.0))


def _factors(tensors: Sequence[Mapping[str, np.ndarray]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    a_part = next(p for p in A_PARTS if p in tensors[0])
    return [t[B_FOR_A[a_part]] for t in tensors], [t[a_part] for t in tensors]


def gram(tensors: Sequence[Mapping[str, np.ndarray]], adapters: Sequence[Adapter]) -> np.ndarray:
    """``G_ij = <s_i B_i A_i, s_j B_j A_j>_F = s_i s_j sum((B_i^T B_j) * (A_i A_j^T))`` for one
    layer, from the factors (ranks may differ)."""
    Bs, As = _factors(tensors)
    s = [scaling(a.config) for a in adapters]
    n = len(Bs)
    G = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            G[i, j] = G[j, i] = s[i] * s[j] * lowrank.inner(Bs[i], As[i], Bs[j], As[j])
    return G


def factorwise_terms(
    tensors: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float], adapters: Sequence[Adapter]
) -> dict[str, float] | None:
    """How one layer's factorwise result relates to the exact one (None when ranks differ).

    The factorwise update is ``F = s_1 B A = sum_ij c_i |c_j| s_i B_i A_j``: the own terms
    ``O = sum_i c_i |c_i| s_i B_i A_i`` and the cross terms ``X = F - O =
    sum_i c_i s_i B_i (sum_{j != i} |c_j| A_j)``; the exact update is ``E = sum_i c_i s_i B_i A_i``.
    Each is one low-rank product of concatenated factors, so ``inner`` gives, without forming
    them: ``{"cross": ||X||^2, "own": ||O||^2, "factorwise": ||F||^2, "exact": ||E||^2,
    "factorwise.exact": <F, E>}``. Terms with ``c_i = 0`` add nothing and are left out.
    """
    used = [i for i, c in enumerate(coefs) if c != 0]
    if len({adapters[i].config["r"] for i in used}) > 1:
        return None
    names = ("cross", "own", "factorwise", "exact", "factorwise.exact")
    if not used:
        return dict.fromkeys(names, 0.0)
    Bs, As = _factors([tensors[i] for i in used])
    c = [coefs[i] for i in used]
    B = np.concatenate([ci * scaling(adapters[i].config) * Bi for ci, i, Bi in zip(c, used, Bs)], axis=1)
    total = sum(abs(ci) * Ai for ci, Ai in zip(c, As))
    own = np.concatenate([abs(ci) * Ai for ci, Ai in zip(c, As)], axis=0)
    cross = np.concatenate([total - abs(ci) * Ai for ci, Ai in zip(c, As)], axis=0)
    every = np.concatenate([total] * len(c), axis=0)  # F = B [A_tot; ...; A_tot]
    plain = np.concatenate(As, axis=0)  # E = B [A_1; ...; A_n]
    return {
        "cross": lowrank.inner(B, cross, B, cross),
        "own": lowrank.inner(B, own, B, own),
        "factorwise": lowrank.inner(B, every, B, every),
        "exact": lowrank.inner(B, plain, B, plain),
        "factorwise.exact": lowrank.inner(B, every, B, plain),
    }


def describe(adapter: Adapter) -> dict[str, Any]:
    c = adapter.config
    return {
        "r": c["r"],
        "lora_alpha": c["lora_alpha"],
        "use_rslora": bool(c.get("use_rslora")),
        "scaling": scaling(c),
    }
