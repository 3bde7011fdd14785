"""Exact sums of low-rank updates and their SVD recompression from the factors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_adapters import config, lora_deltas
from safetensors import safe_open

import pemarith
from pemarith import lowrank
from pemarith.errors import CompatibilityError


def _factors(rng, d, k, ranks):
    return [rng.standard_normal((d, r)) for r in ranks], [rng.standard_normal((r, k)) for r in ranks]


def test_concat_is_the_weighted_sum():
    rng = np.random.default_rng(0)
    Bs, As = _factors(rng, 20, 12, (3, 5, 1))
    w = [0.5, -2.0, 1.5]
    B, A = lowrank.concat(Bs, As, w)
    assert B.shape == (20, 9) and A.shape == (9, 12)
    np.testing.assert_allclose(B @ A, sum(wi * Bi @ Ai for wi, Bi, Ai in zip(w, Bs, As)), atol=1e-12)


def test_concat_keeps_numpy_promotion():
    rng = np.random.default_rng(1)
    Bs = [rng.standard_normal((6, r)).astype(np.float32) for r in (2, 3)]
    As = [rng.standard_normal((r, 5)).astype(np.float32) for r in (2, 3)]
    w = [np.float64(0.1), np.float64(-3.0)]
    B, A = lowrank.concat(Bs, As, w)
    assert B.dtype == np.float32 and A.dtype == np.float64  # numpy's promotion
    np.testing.assert_array_equal(B, np.concatenate(Bs, axis=1))
    np.testing.assert_array_equal(A, np.concatenate([w[0] * As[0].astype(np.float64), w[1] * As[1]]))


@pytest.mark.parametrize("d,k", [(20, 12), (12, 40), (6, 5)])
def test_truncate_reaches_eckart_young(d, k):
    rng = np.random.default_rng(1)
    B, A = lowrank.concat(*_factors(rng, d, k, (4, 5)), [1.0, -0.7])
    dense = B @ A
    S = np.linalg.svd(dense, compute_uv=False)  # the reference, test only
    r0 = np.linalg.matrix_rank(dense)
    for R in range(1, 10):
        Bt, At, err = lowrank.truncate(B, A, R)
        assert Bt.shape == (d, R) and At.shape == (R, k)
        optimal = np.sqrt(np.sum(S[R:] ** 2) / np.sum(S**2))
        achieved = np.linalg.norm(dense - Bt @ At) / np.linalg.norm(dense)
        assert err == pytest.approx(optimal, abs=1e-10)
        assert achieved == pytest.approx(optimal, abs=1e-10)
        if R >= r0:  # exact at (and above) full rank
            np.testing.assert_allclose(Bt @ At, dense, atol=1e-10)
            assert err < 1e-12


def test_truncate_of_zero_update():
    Bt, At, err = lowrank.truncate(np.zeros((5, 3)), np.zeros((3, 4)), 2)
    assert err == 0.0 and not Bt.any() and not At.any()


def test_save_with_rank_reports_layer_errors(adapters, tmp_path):
    pem = 0.5 * pemarith.load(adapters["a"], "a") - pemarith.load(adapters["c8"], "c8")
    full = pem.save(tmp_path / "full", mode="exact", rank=12)
    assert max(full.layer_errors.values()) < 1e-6
    exact = lora_deltas(tmp_path / "full")
    rep = pem.save(tmp_path / "r3", mode="exact", rank=3)
    got = lora_deltas(tmp_path / "r3")
    assert config(tmp_path / "r3")["r"] == 3
    for layer, err in rep.layer_errors.items():
        name = layer.removeprefix("base_model.model.")
        S = np.linalg.svd(exact[name], compute_uv=False)
        assert err == pytest.approx(np.sqrt(np.sum(S[3:] ** 2) / np.sum(S**2)), rel=1e-6)
        assert np.linalg.norm(exact[name] - got[name]) / np.linalg.norm(exact[name]) == pytest.approx(
            err, rel=1e-4
        )
    prov = json.loads((tmp_path / "r3" / "pemarith.json").read_text())
    assert prov["rank"] == 3 and prov["layer_errors"].keys() == rep.layer_errors.keys()
    with safe_open(tmp_path / "r3" / "adapter_model.safetensors", "np") as f:
        assert json.loads(f.metadata()["pemarith"])["layer_errors"] == prov["layer_errors"]


def test_compose_remembers_rank(adapters, tmp_path):
    pem = pemarith.compose("a + b", {"a": adapters["a"], "b": adapters["b"]}, mode="exact", rank=2)
    assert pem.save(tmp_path / "out").rank == 2 and config(tmp_path / "out")["r"] == 2


@pytest.mark.parametrize(
    "mode,rank,match",
    [
        ("exact", 13, "above the concatenated rank 12"),
        ("exact", 0, "positive integer"),
        ("factorwise", 4, "mode 'exact' only"),
    ],
)
def test_bad_rank(adapters, tmp_path, mode, rank, match):
    pem = pemarith.load(adapters["a"], "a") + pemarith.load(adapters["c8" if mode == "exact" else "b"], "x")
    with pytest.raises(CompatibilityError, match=match):
        pem.save(tmp_path / "out", mode=mode, rank=rank)
    assert not list(tmp_path.iterdir())


def test_rank_does_not_apply_to_ia3(adapters, tmp_path):
    with pytest.raises(CompatibilityError, match="LoRA adapters only"):
        pemarith.load(adapters["ia"]).save(tmp_path / "out", mode="exact", rank=2)
