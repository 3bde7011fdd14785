"""Parity: a composed adapter loaded by ``PeftModel.from_pretrained`` gives the forward pass
computed by hand from SPEC.md's formulas, and exact mode matches PEFT's own ``cat``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_adapters import (
    TinyModel,
    by_hand,
    config,
    heads,
    ia3_vectors,
    lora_deltas,
    lora_factors,
    peft_forward,
    scaling,
    tensors,
    tokens,
)
from safetensors import safe_open

import pemarith

X = tokens()


def _check(out, **hand):
    torch.testing.assert_close(peft_forward(out, X), by_hand(X, **hand), atol=1e-5, rtol=1e-5)


def test_factorwise_forward(adapters, tmp_path):
    pem = pemarith.compose("0.3*a - 0.7*b", {"a": adapters["a"], "b": adapters["b"]})
    pem.save(tmp_path / "out")
    fa, fb = lora_factors(adapters["a"]), lora_factors(adapters["b"])
    sa, sb = scaling(config(adapters["a"])), scaling(config(adapters["b"]))
    deltas = {}
    for layer in fa:  # A = sum |c_i| A_i, B = sum c_i s_i/s_out B_i, Delta W = s_out B A
        A = 0.3 * fa[layer][1] + 0.7 * fb[layer][1]
        B = 0.3 * fa[layer][0] - 0.7 * (sb / sa) * fb[layer][0]
        deltas[layer] = sa * B @ A
    _check(tmp_path / "out", deltas=deltas)


def test_exact_forward_mixed_ranks_and_rslora(adapters, tmp_path):
    terms = {"a": 0.5, "c8": -1.25, "d2": 2.0}
    pem = sum(c * pemarith.load(adapters[n], n) for n, c in terms.items())
    pem.save(tmp_path / "out", mode="exact")
    deltas = {}
    for n, c in terms.items():  # Delta W = sum c_i s_i B_i A_i
        for layer, d in lora_deltas(adapters[n]).items():
            deltas[layer] = deltas.get(layer, 0) + c * d
    _check(tmp_path / "out", deltas=deltas)


def test_svd_forward(adapters, tmp_path):
    pem = pemarith.load(adapters["a"], "a") + pemarith.load(adapters["c8"], "c8")
    rep = pem.save(tmp_path / "out", mode="exact", rank=5)
    assert config(tmp_path / "out")["r"] == 5 and set(rep.layer_errors) == {
        f"base_model.model.{n}" for n in ("emb", "lin0", "lin1")
    }
    _check(tmp_path / "out", deltas=lora_deltas(tmp_path / "out"))  # s_out = 1 with r = alpha = 5


@pytest.mark.parametrize("mode", ["factorwise", "exact"])
def test_negation_gives_h_minus_delta_h(adapters, tmp_path, mode):
    # The adapter targets the last (linear) layer, so its effect on the output is delta_h itself.
    (-pemarith.load(adapters["onlyhead"])).save(tmp_path / "neg", mode=mode)
    h = by_hand(X)
    h_a = peft_forward(adapters["onlyhead"], X)
    torch.testing.assert_close(peft_forward(tmp_path / "neg", X), h - (h_a - h), atol=1e-5, rtol=1e-5)


def test_ia3_forward(adapters, tmp_path):
    pemarith.compose("1.2*ia - 0.2*ib", {"ia": adapters["ia"], "ib": adapters["ib"]}).save(tmp_path / "out")
    la, lb = ia3_vectors(adapters["ia"]), ia3_vectors(adapters["ib"])
    _check(tmp_path / "out", ia3={k: 1 + 1.2 * (la[k] - 1) - 0.2 * (lb[k] - 1) for k in la})


def test_ia3_negation_forward(adapters, tmp_path):
    (-pemarith.load(adapters["ia"])).save(tmp_path / "out")
    _check(tmp_path / "out", ia3={k: 2 - v for k, v in ia3_vectors(adapters["ia"]).items()})


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_modules_to_save_affine_and_keep(adapters, tmp_path, kind):
    x, y = ("ha", "hb") if kind == "lora" else ("iha", "ihb")
    px, py = pemarith.load(adapters[x], "x"), pemarith.load(adapters[y], "y")
    (0.25 * px + 0.75 * py).save(tmp_path / "mix", mode="exact")
    hx, hy = heads(adapters[x]), heads(adapters[y])
    assert set(hx) == {"head.weight", "head.bias"}  # PEFT saves them as base_model.model.head.*
    mix = {k: 0.25 * hx[k].astype(np.float64) + 0.75 * hy[k] for k in hx}
    if kind == "lora":
        d = {
            layer: 0.25 * lora_deltas(adapters[x])[layer] + 0.75 * lora_deltas(adapters[y])[layer]
            for layer in lora_deltas(adapters[x])
        }
        _check(tmp_path / "mix", deltas=d, head=mix)
    else:
        lx, ly = ia3_vectors(adapters[x]), ia3_vectors(adapters[y])
        _check(tmp_path / "mix", ia3={k: 0.25 * lx[k] + 0.75 * ly[k] for k in lx}, head=mix)
    (px - py).save(tmp_path / "keep", keep="y", mode="exact")
    assert all(np.array_equal(v, hy[k]) for k, v in heads(tmp_path / "keep").items())
    assert peft_forward(tmp_path / "keep", X).shape == X.shape + (3,)


def test_exact_matches_peft_cat(adapters, tmp_path):
    """PEFT's ``add_weighted_adapter(combination_type="cat")`` builds A = [w_1 s_1 A_1; w_2 s_2 A_2],
    B = [B_1, B_2] and sets lora_alpha = r (scaling 1): its weights multiply the *updates*
    linearly (Delta W = sum w_i s_i B_i A_i), unlike ``linear`` which scales both factors by
    sqrt(w). So PEFT's cat with weights w_i is our exact mode with coefficients c_i = w_i, and
    since we also put c_i s_i on A, the factors agree tensor for tensor.

    PEFT quirk (0.21): cat keeps the first adapter's ``use_rslora``, so with rsLoRA inputs its
    scaling becomes r/sqrt(r) = sqrt(r) instead of 1 and the result is off by sqrt(r); pemarith
    writes ``use_rslora: false`` (checked in test_exact_forward_mixed_ranks_and_rslora)."""
    from peft import PeftModel

    w = [0.7, -1.3]
    model = PeftModel.from_pretrained(TinyModel(), str(adapters["a"]), adapter_name="a")
    model.load_adapter(str(adapters["d2"]), adapter_name="d2")
    model.add_weighted_adapter(["a", "d2"], w, "cat", combination_type="cat")
    model.save_pretrained(str(tmp_path / "peft"), selected_adapters=["cat"])
    theirs = tmp_path / "peft" / "cat"
    pem = w[0] * pemarith.load(adapters["a"], "a") + w[1] * pemarith.load(adapters["d2"], "d2")
    pem.save(tmp_path / "ours", mode="exact")
    assert config(theirs)["r"] == config(tmp_path / "ours")["r"] == 6
    assert config(theirs)["lora_alpha"] == config(tmp_path / "ours")["lora_alpha"] == 6
    ours, peft_t = tensors(tmp_path / "ours"), tensors(theirs)
    assert set(ours) == set(peft_t)
    for k in ours:
        np.testing.assert_allclose(ours[k], peft_t[k], atol=1e-6, rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("name,dtype", [("bf_a", torch.bfloat16), ("f16", torch.float16)])
def test_half_precision_exact_and_preserved(adapters, tmp_path, name, dtype):
    a = pemarith.load(adapters[name], "a")
    (1 * a).save(tmp_path / "same")
    (-(-a)).save(tmp_path / "nn", mode="factorwise")
    src = adapters[name] / "adapter_model.safetensors"
    for out in ("same", "nn"):
        with safe_open(src, "pt") as f, safe_open(tmp_path / out / "adapter_model.safetensors", "pt") as g:
            for k in f.keys():  # bit for bit, dtype preserved
                assert g.get_tensor(k).dtype == dtype
                assert torch.equal(f.get_tensor(k).view(torch.int16), g.get_tensor(k).view(torch.int16))
    a.save(tmp_path / "f32", dtype="float32")
    with safe_open(tmp_path / "f32" / "adapter_model.safetensors", "pt") as g:
        assert all(g.get_tensor(k).dtype == torch.float32 for k in g.keys())


def test_bf16_combination_rounds_once(adapters, tmp_path):
    pem = 0.5 * pemarith.load(adapters["bf_a"], "a") + 0.5 * pemarith.load(adapters["bf_b"], "b")
    pem.save(tmp_path / "out", mode="exact")
    with safe_open(tmp_path / "out" / "adapter_model.safetensors", "pt") as g:
        assert {g.get_tensor(k).dtype for k in g.keys()} == {torch.bfloat16}
    # computed in float64 from the bf16 inputs, rounded once to bf16
    src = {n: {k: v.double() for k, v in _pt(adapters[n]).items()} for n in ("bf_a", "bf_b")}
    s = scaling(config(adapters["bf_a"]))
    key = "base_model.model.lin0.lora_A.weight"
    expect = torch.cat([0.5 * s * src["bf_a"][key], 0.5 * s * src["bf_b"][key]]).to(torch.bfloat16)
    assert torch.equal(_pt(tmp_path / "out")[key], expect)
    _peft_loads_in(tmp_path / "out", torch.bfloat16)


def test_provenance_files_do_not_trouble_peft(adapters, tmp_path):
    pemarith.compose("a - b", {"a": adapters["a"], "b": adapters["b"]}).save(tmp_path / "out")
    prov = json.loads((tmp_path / "out" / "pemarith.json").read_text())
    assert prov["expression"] == "a - b" and prov["mode"] == "factorwise"
    assert [i["name"] for i in prov["inputs"]] == ["a", "b"] and len(prov["inputs"][0]["sha256"]) == 64
    with safe_open(tmp_path / "out" / "adapter_model.safetensors", "np") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta["pemarith"])["terms"] == {"a": 1.0, "b": -1.0}
    peft_forward(tmp_path / "out", X)  # loads with the extra file present


def _pt(path):
    with safe_open(path / "adapter_model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _peft_loads_in(path, dtype):
    from peft import PeftModel

    return PeftModel.from_pretrained(TinyModel().to(dtype), str(path))
