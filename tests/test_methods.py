"""Merge methods (TIES, DARE, magnitude pruning) from the adapter files, against PEFT's own
``peft.utils.merge_utils`` on the dense task vectors, read back through PEFT (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_adapters import TinyModel, config, ia3_vectors, lora_factors, make_ia3, make_lora, scaling
from peft.utils import merge_utils

import pemarith
from pemarith.errors import PemarithError
from pemarith.methods import MergeSpec, layer_rng, prune_random

PRUNING = ["ties", "magnitude_prune"]
SIGNED = [("ties", "total"), ("ties", "frequency"), ("magnitude_prune", "total")]


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    # emb (16 x 30) and lin0 (24 x 16): rank 16 is full rank for both, so the SVD is exact
    return {
        "a": make_lora(root / "a", seed=1, r=4, alpha=8, targets=("emb", "lin0")),
        "b": make_lora(root / "b", seed=2, r=2, alpha=6, targets=("emb", "lin0")),
        "c": make_lora(root / "c", seed=3, r=4, alpha=4, targets=("emb", "lin0")),
        "ia": make_ia3(root / "ia", seed=4),
        "ib": make_ia3(root / "ib", seed=5),
        "ic": make_ia3(root / "ic", seed=6),
    }


def peft_merged_deltas(path) -> dict[str, np.ndarray]:
    """``W' - W`` per adapted layer, from PEFT loading the adapter and merging it."""
    from peft import PeftModel

    base = TinyModel().state_dict()
    merged = PeftModel.from_pretrained(TinyModel(), str(path)).merge_and_unload().state_dict()
    out = {}
    for layer in ("emb", "lin0"):
        d = (merged[f"{layer}.weight"] - base[f"{layer}.weight"]).double().numpy()
        out[layer] = d.T if layer == "emb" else d  # back to the stored B A orientation
    return out


def peft_ia3_vectors(path) -> dict[str, np.ndarray]:
    from peft import PeftModel

    model = PeftModel.from_pretrained(TinyModel(), str(path))
    return {
        n.split(".")[-3]: p.detach().double().numpy() for n, p in model.named_parameters() if "ia3_l" in n
    }


def reference(method, taus, density, sign):
    ts = [torch.from_numpy(t) for t in taus]
    w = torch.ones(len(ts), dtype=torch.float64)
    if method == "ties":
        return merge_utils.ties(ts, w, density, sign).numpy()
    if method == "magnitude_prune":
        return merge_utils.magnitude_prune(ts, w, density).numpy()
    raise AssertionError(method)


def lora_taus(paths, coefs):
    out = {}
    for p, c in zip(paths, coefs):
        for layer, (B, A) in lora_factors(p).items():
            out.setdefault(layer, []).append(c * scaling(config(p)) * B @ A)
    return out


@pytest.mark.parametrize("method, sign", SIGNED)
@pytest.mark.parametrize("coefs", [(1.0, 1.0, 1.0), (0.7, -0.5, 1.2)])
def test_lora_methods_equal_peft_merge_utils(mods, tmp_path, method, sign, coefs):
    names = ("a", "b", "c")
    pem = sum(c * pemarith.load(mods[n], n) for c, n in zip(coefs, names))
    pem.save(tmp_path / "out", mode="exact", rank=16, method=method, density=0.4, majority_sign=sign)
    got = peft_merged_deltas(tmp_path / "out")
    for layer, taus in lora_taus([mods[n] for n in names], coefs).items():
        np.testing.assert_allclose(got[layer], reference(method, taus, 0.4, sign), atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "out" / "pemarith.json").read_text())
    assert (
        record["method"] == method
        and record["density"] == 0.4
        and max(record["layer_errors"].values()) < 1e-6
    )


@pytest.mark.parametrize("method, sign", SIGNED)
def test_ia3_methods_equal_peft_merge_utils(mods, tmp_path, method, sign):
    names, coefs = ("ia", "ib", "ic"), (1.0, -0.6, 0.9)
    pem = sum(c * pemarith.load(mods[n], n) for c, n in zip(coefs, names))
    pem.save(tmp_path / "out", method=method, density=0.5, majority_sign=sign)
    got = peft_ia3_vectors(tmp_path / "out")
    vecs = [ia3_vectors(mods[n]) for n in names]
    for layer in vecs[0]:
        taus = [c * (v[layer] - 1.0) for c, v in zip(coefs, vecs)]
        np.testing.assert_allclose(got[layer], 1.0 + reference(method, taus, 0.5, sign), atol=1e-6, rtol=0)


def test_dare_ties_equals_peft_on_the_same_masks(mods, tmp_path):
    names, coefs = ("a", "b", "c"), (1.0, -0.8, 0.5)
    pem = sum(c * pemarith.load(mods[n], n) for c, n in zip(coefs, names))
    pem.save(tmp_path / "out", mode="exact", rank=16, method="dare_ties", density=0.5, seed=7)
    got = peft_merged_deltas(tmp_path / "out")
    for layer, taus in lora_taus([mods[n] for n in names], coefs).items():
        rng = layer_rng(7, f"base_model.model.{layer}")
        pruned = torch.stack([torch.from_numpy(prune_random(t, 0.5, rng)) for t in taus])
        mask = merge_utils.calculate_majority_sign_mask(pruned, "total")
        np.testing.assert_allclose(
            got[layer], merge_utils.disjoint_merge(pruned, mask).numpy(), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("method, same_as", [("dare_linear", None), ("dare_ties", "ties")])
def test_dare_with_density_one_prunes_nothing(mods, tmp_path, method, same_as):
    pem = pemarith.load(mods["a"], "a") - 0.5 * pemarith.load(mods["b"], "b")
    pem.save(tmp_path / "dare", mode="exact", rank=16, method=method, density=1.0)
    if same_as is None:
        pem.save(tmp_path / "ref", mode="exact")  # linear, lossless
    else:
        pem.save(tmp_path / "ref", mode="exact", rank=16, method=same_as, density=1.0)
    got, ref = peft_merged_deltas(tmp_path / "dare"), peft_merged_deltas(tmp_path / "ref")
    for layer in got:
        np.testing.assert_allclose(got[layer], ref[layer], atol=1e-5, rtol=0)


def test_dare_keeps_about_half_scaled_by_two_and_is_seeded(mods, tmp_path):
    a = pemarith.load(mods["ia"], "a")
    for seed, out in ((3, "x"), (3, "y"), (4, "z")):
        a.save(tmp_path / out, method="dare_linear", density=0.5, seed=seed)
    orig = {k: v - 1.0 for k, v in ia3_vectors(mods["ia"]).items()}
    x, y, z = (ia3_vectors(tmp_path / o) for o in ("x", "y", "z"))
    kept = total = 0
    for layer, tau in orig.items():
        d = x[layer] - 1.0
        on = np.abs(d) > 1e-7
        np.testing.assert_allclose(d[on], 2 * tau[on], rtol=1e-5)
        kept, total = kept + on.sum(), total + on.size
        np.testing.assert_array_equal(x[layer], y[layer])
    assert 0.3 < kept / total < 0.7
    assert any(not np.array_equal(x[k], z[k]) for k in x)


def test_magnitude_prune_single_module_keeps_the_largest(mods, tmp_path):
    pemarith.load(mods["a"], "a").save(
        tmp_path / "out", mode="exact", rank=16, method="magnitude_prune", density=0.25
    )
    got = peft_merged_deltas(tmp_path / "out")
    for layer, (tau,) in lora_taus([mods["a"]], [1.0]).items():
        kept = np.abs(got[layer]) > 1e-6
        assert abs(kept.mean() - 0.25) < 0.02
        assert np.abs(tau[kept]).min() >= np.abs(tau[~kept]).max() - 1e-6


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--method", "ties", "--density", "0", "--mode", "exact", "--rank", "4"],
            "density must be in (0, 1]",
        ),
        (
            ["--method", "ties", "--density", "1.5", "--mode", "exact", "--rank", "4"],
            "density must be in (0, 1]",
        ),
        (["--method", "ties", "--mode", "exact", "--rank", "4"], "needs a density"),
        (["--method", "ties", "--density", "0.5"], "use --mode exact --rank R"),
        (["--method", "dare_ties", "--density", "0.5", "--mode", "exact"], "use --mode exact --rank R"),
        (
            ["--method", "ties", "--density", "0.5", "--mode", "exact", "--rank", "99"],
            "above min(d_out, d_in)",
        ),
        (["--density", "0.5"], "not to linear"),
    ],
)
def test_bad_options_are_one_line(mods, tmp_path, args, message):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pemarith.cli",
            "compose",
            "-m",
            f"a={mods['a']}",
            "-m",
            f"b={mods['b']}",
            "-o",
            str(tmp_path / "out"),
            *args,
            "a + b",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr and not (tmp_path / "out").exists()


def test_cli_and_bake_take_the_method(mods, tmp_path):
    from safetensors.torch import save_file

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pemarith.cli",
            "compose",
            "-m",
            f"a={mods['a']}",
            "-m",
            f"b={mods['b']}",
            "-o",
            str(tmp_path / "out"),
            "--mode",
            "exact",
            "--rank",
            "16",
            "--method",
            "ties",
            "--density",
            "0.5",
            "a - b",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "method    ties (density 0.5, majority_sign total, space dense)" in proc.stdout
    base = tmp_path / "base"
    base.mkdir()
    save_file(TinyModel().state_dict(), str(base / "model.safetensors"))
    from pemarith.bake import bake

    pem = pemarith.load(mods["a"], "a") - pemarith.load(mods["b"], "b")
    bake(pem, base, tmp_path / "baked", mode="exact", rank=16, method="ties", density=0.5)
    from safetensors.numpy import load_file

    baked = load_file(str(tmp_path / "baked" / "model.safetensors"))
    want = peft_merged_deltas(tmp_path / "out")
    np.testing.assert_allclose(
        baked["lin0.weight"] - TinyModel().state_dict()["lin0.weight"].numpy(), want["lin0"], atol=1e-5
    )


def test_merge_spec_validates():
    with pytest.raises(PemarithError, match="did you mean 'ties'"):
        MergeSpec("tie", 0.5)
    assert MergeSpec("ties", 0.5).describe() == {
        "method": "ties",
        "density": 0.5,
        "majority_sign": "total",
        "space": "dense",
    }
    assert MergeSpec("linear", space="core").describe() == {"method": "linear", "space": "core"}
    with pytest.raises(PemarithError, match="did you mean 'core'"):
        MergeSpec("ties", 0.5, space="cor")
