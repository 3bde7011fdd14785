"""LoRA in core space (docs/SPEC.md, "Core space"): each layer's task vectors as small cores in
the span of the stacked factors, and the factors of a merged core."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .lora import A_PARTS, B_FOR_A, _factors, scaling

if TYPE_CHECKING:
    from ..io import Adapter


def core_vectors(
    tensors: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float], adapters: Sequence[Adapter]
) -> tuple[list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The task vectors of one layer in core space, ``tau_i = Q_B M_i Q_A^T``: the reduced QRs
    ``[B_1 ... B_n] = Q_B R_B`` (``d_out x k_B``) and ``[A_1; ...; A_n]^T = Q_A R_A``
    (``d_in x k_A``, ``k <= sum_i r_i``) and the cores ``M_i = c_i s_i R_B[:, I_i] R_A[:, I_i]^T``
    (``k_B x k_A``), returned with the basis ``(Q_B, Q_A)``. ``O((d_out + d_in) (sum_i r_i)^2)``:
    no ``d_out x d_in`` matrix."""
    Bs, As = _factors(tensors)
    QB, RB = np.linalg.qr(np.concatenate(Bs, axis=1))
    QA, RA = np.linalg.qr(np.concatenate(As, axis=0).T)
    cores, col = [], 0
    for c, a, B in zip(coefs, adapters, Bs):
        cols = slice(col, col + B.shape[1])
        cores.append(c * scaling(a.config) * (RB[:, cols] @ RA[:, cols].T))
        col = cols.stop
    return cores, (QB, QA)


def from_core(
    merged: np.ndarray,
    basis: tuple[np.ndarray, np.ndarray],
    tensors: Sequence[Mapping[str, np.ndarray]],
    rank: int,
) -> tuple[dict[str, np.ndarray], float]:
    """The rank-``rank`` factors of ``Q_B M Q_A^T`` from the SVD of the core ``M = U S V^T``:
    ``B = Q_B U_R S_R``, ``A = V_R^T Q_A^T`` (scaling 1, as :func:`from_task_vector`), and the
    relative error ``sqrt(sum_{j > R} S_j^2 / sum_j S_j^2)`` (``Q_B``, ``Q_A`` orthonormal);
    a rank above the core's is padded with zero factors (the result is then exact)."""
    QB, QA = basis
    a_part = next(p for p in A_PARTS if p in tensors[0])
    U, S, Vt = np.linalg.svd(merged, full_matrices=False)
    k = min(rank, S.size)
    A = np.zeros((rank, QA.shape[0]))
    B = np.zeros((QB.shape[0], rank))
    A[:k], B[:, :k] = Vt[:k] @ QA.T, QB @ (U[:, :k] * S[:k])
    total = float(np.sqrt(np.sum(S**2)))
    err = float(np.sqrt(np.sum(S[k:] ** 2)) / total) if total > 0 else 0.0
    return {a_part: A, B_FOR_A[a_part]: B}, err
