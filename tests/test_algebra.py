"""Algebraic laws of PEM arithmetic, checked on the saved files (SPEC.md)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_adapters import (
    config,
    ia3_vectors,
    lora_deltas,
    lora_factors,
    scaling,
    tensors,
)

import pemarith
from pemarith.errors import CompatibilityError, PemarithError
from pemarith.module import ModuleAlgebraError


@pytest.fixture
def ab(adapters):
    return pemarith.load(adapters["a"], "a"), pemarith.load(adapters["b"], "b")


def _save(pem, tmp_path, name, **kw):
    out = tmp_path / name
    pem.save(out, **kw)
    return out


def _close(x, y, tol=1e-6):
    assert set(x) == set(y)
    for k in x:
        np.testing.assert_allclose(x[k], y[k], atol=tol, rtol=tol, err_msg=k)


def _exact_expected(adapters, terms):
    """sum_i c_i s_i B_i A_i, per layer (dense, test only)."""
    out = {}
    for name, c in terms.items():
        for layer, d in lora_deltas(adapters[name]).items():
            out[layer] = out.get(layer, 0) + c * d
    return out


# ---- operators on the value type -------------------------------------------------------------
def test_operators_build_the_normal_form(ab):
    a, b = ab
    assert dict((0.5 * a + b * 0.5).terms) == {"a": 0.5, "b": 0.5}
    assert dict((-a).terms) == {"a": -1.0}
    assert dict((a - b + a).terms) == {"a": 2.0, "b": -1.0}
    assert dict((a / 4).terms) == {"a": 0.25}
    assert dict(sum([a, b, a]).terms) == {"a": 2.0, "b": 1.0}
    assert dict((a - a).terms) == {"a": 0.0}
    assert -(-a) == a
    assert a + b == b + a
    assert 2 * (a + b) == 2 * a + 2 * b
    assert +a == a and 0 - a == -a
    assert str(0.3 * a - b) == "0.3*a - b"


def test_pem_is_immutable(ab):
    a, _ = ab
    with pytest.raises(AttributeError):
        a.x = 1
    with pytest.raises(TypeError):
        a.terms["a"] = 2.0


@pytest.mark.parametrize(
    "op",
    [
        lambda a, b: a * b,
        lambda a, b: a / b,
        lambda a, b: 2 / a,
        lambda a, b: a + 1,
        lambda a, b: 1 - a,
        lambda a, b: a * "x",
        lambda a, b: a * float("nan"),
        lambda a, b: a / 0,
    ],
)
def test_nonlinear_operations_are_errors(ab, op):
    with pytest.raises(ModuleAlgebraError) as e:
        op(*ab)
    assert isinstance(e.value, PemarithError) and isinstance(e.value, TypeError)


def test_same_name_same_file_combines_different_file_is_error(adapters):
    a1, a2 = pemarith.load(adapters["a"], "a"), pemarith.load(adapters["a"], "a")
    assert dict((a1 + a2).terms) == {"a": 2.0}
    with pytest.raises(CompatibilityError, match="two different adapters"):
        a1 + pemarith.load(adapters["b"], "a")


def test_load_names_by_basename(adapters):
    assert list(pemarith.load(adapters["a"]).terms) == ["a"]


def test_compose_uses_expression_and_remembers_mode(adapters, tmp_path):
    pem = pemarith.compose("l*a + (1-l)*b", {"a": adapters["a"], "b": adapters["b"]}, mode="exact", l=0.25)
    assert dict(pem.terms) == {"a": 0.25, "b": 0.75}
    rep = pem.save(tmp_path / "out")
    assert rep.mode == "exact" and config(tmp_path / "out")["r"] == 8
    # PEM values are used as they are
    both = pemarith.compose(
        "2*x", {"x": pemarith.load(adapters["a"], "a") - pemarith.load(adapters["b"], "b")}
    )
    assert dict(both.terms) == {"a": 2.0, "b": -2.0}


# ---- LoRA exact: linear in the updates ----------------------------------------------------------
@pytest.mark.parametrize(
    "names,coefs", [(("a", "b"), (0.3, 0.7)), (("a", "c8", "d2"), (1.5, -0.5, 2.0)), (("b",), (-1.0,))]
)
def test_exact_is_linear_in_updates(adapters, tmp_path, names, coefs):
    pem = sum(c * pemarith.load(adapters[n], n) for n, c in zip(names, coefs))
    out = _save(pem, tmp_path, "out", mode="exact")
    cfg = config(out)
    assert cfg["r"] == cfg["lora_alpha"] == sum(config(adapters[n])["r"] for n in names)
    assert cfg["use_rslora"] is False
    _close(lora_deltas(out), _exact_expected(adapters, dict(zip(names, coefs))))


def test_exact_a_minus_a_is_zero_and_commutes(ab, tmp_path, adapters):
    a, b = ab
    zero = lora_deltas(_save(a - a, tmp_path, "zero", mode="exact"))
    assert all(np.abs(d).max() == 0 for d in zero.values())
    _close(
        lora_deltas(_save(a + 2 * b, tmp_path, "ab", mode="exact")),
        lora_deltas(_save(2 * b + a, tmp_path, "ba", mode="exact")),
    )
    _close(lora_deltas(_save(-(-a), tmp_path, "nn", mode="exact")), lora_deltas(adapters["a"]))


# ---- LoRA factorwise: the paper's rules on the factors -------------------------------------------
def test_factorwise_formula(adapters, tmp_path):
    a, b = pemarith.load(adapters["a"], "a"), pemarith.load(adapters["b"], "b")
    out = _save(0.3 * a - 0.7 * b, tmp_path, "out")
    fa, fb = lora_factors(adapters["a"]), lora_factors(adapters["b"])
    sa, sb = scaling(config(adapters["a"])), scaling(config(adapters["b"]))
    assert config(out)["lora_alpha"] == config(adapters["a"])["lora_alpha"]  # s_out = s_a
    for layer, (B, A) in lora_factors(out).items():
        np.testing.assert_allclose(A, 0.3 * fa[layer][1] + 0.7 * fb[layer][1], atol=1e-6)
        np.testing.assert_allclose(B, 0.3 * fa[layer][0] - 0.7 * (sb / sa) * fb[layer][0], atol=1e-6)


def test_factorwise_negation_scale_and_a_minus_a(adapters, tmp_path):
    a = pemarith.load(adapters["a"], "a")
    fa = lora_factors(adapters["a"])
    neg = lora_factors(_save(-a, tmp_path, "neg"))
    for layer, (B, A) in neg.items():  # eq. 6: {A, -B}
        np.testing.assert_array_equal(A, fa[layer][1])
        np.testing.assert_array_equal(B, -fa[layer][0])
    # a lone scale c*t scales the update by c*|c| (both factors scaled): the paper's method
    half = lora_deltas(_save(-0.5 * a, tmp_path, "half"))
    _close(half, {k: -0.25 * v for k, v in lora_deltas(adapters["a"]).items()})
    zero = lora_factors(_save(a - a, tmp_path, "zero"))
    assert all(np.abs(B).max() == 0 for B, _ in zero.values())
    # double negation is the identity, bit for bit
    nn = tensors(_save(-(-a), tmp_path, "nn"))
    assert nn.keys() == tensors(adapters["a"]).keys()
    for k, v in nn.items():
        np.testing.assert_array_equal(v, tensors(adapters["a"])[k])


def test_factorwise_commutes(ab, tmp_path):
    a, b = ab  # s_out is the first module's scaling, so the stored B differ; the updates agree
    _close(
        lora_deltas(_save(0.2 * a + 0.8 * b, tmp_path, "x")),
        lora_deltas(_save(0.8 * b + 0.2 * a, tmp_path, "y")),
    )


# ---- (IA)3 -------------------------------------------------------------------------------------
def test_ia3_offset_arithmetic(adapters, tmp_path):
    ia, ib = pemarith.load(adapters["ia"], "ia"), pemarith.load(adapters["ib"], "ib")
    la, lb = ia3_vectors(adapters["ia"]), ia3_vectors(adapters["ib"])
    for pem, expect in [
        (ia - ia, {k: np.ones_like(v) for k, v in la.items()}),  # the identity
        (-ia, {k: 2 - v for k, v in la.items()}),  # eq. 7
        (0.3 * ia + 0.7 * ib, {k: 0.3 * la[k] + 0.7 * lb[k] for k in la}),
        (ia + ib, {k: la[k] + lb[k] - 1 for k in la}),
        (sum([ia, ib]) / 2, {k: (la[k] + lb[k]) / 2 for k in la}),
    ]:
        _close(ia3_vectors(_save(pem, tmp_path, f"o{len(list(tmp_path.iterdir()))}")), expect)
    zero = ia3_vectors(_save(ia - ia, tmp_path, "zero"))
    assert all((v == 1).all() for v in zero.values())


def test_iter_tensors_and_output_config(adapters):
    a, b = pemarith.load(adapters["a"], "a"), pemarith.load(adapters["c8"], "c8")
    got = dict((a + b).iter_tensors(mode="exact"))
    assert set(got) == set(tensors(adapters["a"]))
    assert got["base_model.model.lin0.lora_A.weight"].shape == (12, 16)
    assert got["base_model.model.emb.lora_embedding_B"].shape == (16, 12)
    assert (a + b).output_config("exact")["r"] == 12
    assert (a + a).output_config() == config(adapters["a"])


@pytest.mark.parametrize(
    "names,dtype", [(("a", "c8"), None), (("bf_a", "bf_b"), None), (("a", "c8"), "bfloat16")]
)
def test_iter_tensors_equals_the_saved_file_layer_for_layer(adapters, tmp_path, names, dtype):
    # exact mode builds each layer in buffers reused from layer to layer: what iter_tensors
    # yielded must stay what it was (layers of equal shapes would otherwise show the last one)
    pem = 0.7 * pemarith.load(adapters[names[0]], "x") - 1.3 * pemarith.load(adapters[names[1]], "y")
    got = dict(pem.iter_tensors(mode="exact", dtype=dtype))
    pem.save(tmp_path / "out", mode="exact", dtype=dtype)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k).float().numpy() for k in f.keys()}
    assert set(got) == set(saved)
    for k in saved:
        np.testing.assert_array_equal(got[k], saved[k], err_msg=k)
    assert not np.array_equal(
        got["base_model.model.lin0.lora_A.weight"], got["base_model.model.lin1.lora_A.weight"]
    )
