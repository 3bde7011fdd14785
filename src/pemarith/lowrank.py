"""Low-rank updates ``Delta W = B A`` kept as factors: exact sums and SVD recompression.

Nothing here forms the dense ``d x k`` matrix: with ``R0`` the concatenated rank, the work is
``O((d + k) R0^2)``, not ``O(d k R0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def concat(
    Bs: Sequence[np.ndarray], As: Sequence[np.ndarray], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """``sum_i w_i B_i A_i`` as one pair of factors, losslessly.

    Returns ``B = [B_1, ..., B_n]`` (``d x sum r_i``) and ``A = [w_1 A_1; ...; w_n A_n]``
    (``sum r_i x k``), in the dtypes numpy's promotion gives (``result_type`` of the ``B_i``; of
    the ``A_i`` and the weights). The weights go on ``A`` as in PEFT's
    ``add_weighted_adapter(..., "cat")``.
    """
    As, weights = list(As), list(weights)
    B = np.concatenate(list(Bs), axis=1)
    A = np.empty((sum(Ai.shape[0] for Ai in As), As[0].shape[1]), np.result_type(*As, *weights))
    row = 0
    for w, Ai in zip(weights, As):  # each block scaled straight into place: no temporaries
        np.multiply(Ai, w, out=A[row : row + Ai.shape[0]])
        row += Ai.shape[0]
    return B, A


def inner(B1: np.ndarray, A1: np.ndarray, B2: np.ndarray, A2: np.ndarray) -> float:
    """The Frobenius inner product ``<B_1 A_1, B_2 A_2> = trace(A_1^T B_1^T B_2 A_2)``
    ``= sum((B_1^T B_2) * (A_1 A_2^T))``, from the factors (``O((d + k) r_1 r_2)``)."""
    return float(np.sum((B1.T @ B2) * (A1 @ A2.T)))


def truncate(B: np.ndarray, A: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Best rank-``rank`` factors of ``B A`` (Eckart-Young) and the relative Frobenius error.

    With the QRs ``B = Q_b R_b`` and ``A^T = Q_a R_a``, ``B A = Q_b (R_b R_a^T) Q_a^T``, and the
    SVD ``R_b R_a^T = U S V^T`` of the small core gives ``B A = (Q_b U) S (Q_a V)^T``. We keep
    the top ``rank`` triplets and split ``S`` evenly: ``B' = Q_b U_R S_R^(1/2)``,
    ``A' = S_R^(1/2) V_R^T Q_a^T``. ``Q_b`` and ``Q_a`` are never formed (only the R factors are
    computed, the cheap part of a QR): since ``B R_a^T V_R = Q_b U_R S_R`` and
    ``U_R^T R_b A = S_R V_R^T Q_a^T``, ``B' = B R_a^T V_R S_R^(-1/2)`` and
    ``A' = S_R^(-1/2) U_R^T R_b A``. Singular values below round-off (``S_j <= S_1 * R0 * eps``)
    are dropped. Error: ``||B A - B' A'||_F / ||B A||_F = sqrt(sum_{j > rank} S_j^2 / sum_j S_j^2)``
    (0 when ``B A = 0``). Columns beyond the number of kept triplets are zero.
    """
    d, k = B.shape[0], A.shape[1]
    Rb = np.asarray(np.linalg.qr(B, mode="r"))  # mode "r": the R factor alone
    Ra = np.asarray(np.linalg.qr(A.T, mode="r"))
    U, S, Vt = np.linalg.svd(Rb @ Ra.T, full_matrices=False)
    tol = S[0] * max(Rb.shape[1], 1) * np.finfo(np.float64).eps if S.size else 0.0
    kept = min(int(rank), int(np.count_nonzero(S > tol)))
    total = float(np.sum(S**2))
    err = float(np.sqrt(np.sum(S[kept:] ** 2) / total)) if total > 0 else 0.0
    inv_root = 1.0 / np.sqrt(S[:kept])
    B_out = np.zeros((d, rank), dtype=np.float64)
    A_out = np.zeros((rank, k), dtype=np.float64)
    B_out[:, :kept] = (B @ (Ra.T @ Vt[:kept].T)) * inv_root
    A_out[:kept] = inv_root[:, None] * ((U[:, :kept].T @ Rb) @ A)
    return B_out, A_out, err
