"""Merge methods in core space (``space="core"``, issue 20 item 3): the task vectors' cores in
the span of the stacked factors, merged by PEFT's own ``merge_utils``, read back through PEFT."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_adapters import ia3_vectors, lora_factors, make_ia3, make_lora
from peft.utils import merge_utils
from test_methods import lora_taus, peft_ia3_vectors, peft_merged_deltas

import pemarith
from pemarith.methods import layer_rng, prune_random


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    root = tmp_path_factory.mktemp("core")
    # emb (16 x 30) and lin0 (24 x 16), ranks 4 + 2 + 3 = 9: the cores are 9 x 9
    return {
        "a": make_lora(root / "a", seed=1, r=4, alpha=8, targets=("emb", "lin0")),
        "b": make_lora(root / "b", seed=2, r=2, alpha=6, targets=("emb", "lin0")),
        "c": make_lora(root / "c", seed=3, r=3, alpha=4, targets=("emb", "lin0")),
        "ia": make_ia3(root / "ia", seed=4),
        "ib": make_ia3(root / "ib", seed=5),
    }


NAMES, COEFS = ("a", "b", "c"), (0.9, -0.6, 1.3)


def composed(mods):
    return sum(c * pemarith.load(mods[n], n) for c, n in zip(COEFS, NAMES))


def bases(paths):
    """Orthonormal bases of the stacked factors' spans, by numpy's reduced QR (as the SPEC says):
    ``Q_B`` of ``[B_1 ... B_n]`` and ``Q_A`` of ``[A_1; ...; A_n]^T``, per layer."""
    factors = [lora_factors(p) for p in paths]
    out = {}
    for layer in factors[0]:
        QB = np.linalg.qr(np.concatenate([f[layer][0] for f in factors], axis=1))[0]
        QA = np.linalg.qr(np.concatenate([f[layer][1] for f in factors], axis=0).T)[0]
        out[layer] = (QB, QA)
    return out


def project(tau, QB, QA):
    """``Q_B^T tau Q_A``, with the entries that are 0 in exact arithmetic (the triangular R
    factors make each core zero outside its module's rows and columns) set to 0, not left as
    round-off: TIES counts the sign of every entry it keeps."""
    core = QB.T @ tau @ QA
    core[np.abs(core) < 1e-12 * np.abs(core).max()] = 0.0
    return core


def test_linear_in_core_space_equals_exact_mode(mods, tmp_path):
    pem = composed(mods)
    pem.save(tmp_path / "core", mode="exact", rank=9, space="core")
    pem.save(tmp_path / "exact", mode="exact")  # lossless concatenation, no SVD
    got, want = peft_merged_deltas(tmp_path / "core"), peft_merged_deltas(tmp_path / "exact")
    for layer in want:
        np.testing.assert_allclose(got[layer], want[layer], atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "core" / "pemarith.json").read_text())
    assert record["space"] == "core" and max(record["layer_errors"].values()) < 1e-6


def test_linear_core_truncation_error_is_the_dense_svd_error(mods, tmp_path):
    composed(mods).save(tmp_path / "out", mode="exact", rank=3, space="core")
    errors = json.loads((tmp_path / "out" / "pemarith.json").read_text())["layer_errors"]
    for layer, taus in lora_taus([mods[n] for n in NAMES], COEFS).items():
        S = np.linalg.svd(np.sum(taus, axis=0), compute_uv=False)
        want = np.sqrt(np.sum(S[3:] ** 2) / np.sum(S**2))
        assert abs(errors[f"base_model.model.{layer}"] - want) < 1e-6


@pytest.mark.parametrize(
    "method, sign", [("ties", "total"), ("ties", "frequency"), ("magnitude_prune", "total")]
)
def test_methods_in_core_space_are_merge_utils_on_the_projected_cores(mods, tmp_path, method, sign):
    composed(mods).save(
        tmp_path / "out", mode="exact", rank=9, method=method, density=0.4, majority_sign=sign, space="core"
    )
    got = peft_merged_deltas(tmp_path / "out")
    Q = bases([mods[n] for n in NAMES])
    for layer, taus in lora_taus([mods[n] for n in NAMES], COEFS).items():
        QB, QA = Q[layer]
        cores = [torch.from_numpy(project(t, QB, QA)) for t in taus]  # the dense tau_i, projected
        w = torch.ones(len(cores), dtype=torch.float64)
        if method == "ties":
            merged = merge_utils.ties(cores, w, 0.4, sign).numpy()
        else:
            merged = merge_utils.magnitude_prune(cores, w, 0.4).numpy()
        np.testing.assert_allclose(got[layer], QB @ merged @ QA.T, atol=1e-5, rtol=0)
        # and it is a different merge from the dense one: pruning core entries, not weights
        dense = merge_utils.ties([torch.from_numpy(t) for t in taus], w, 0.4, sign).numpy()
        assert np.abs(got[layer] - dense).max() > 1e-3


def test_dare_in_core_space_uses_the_seeded_masks(mods, tmp_path):
    composed(mods).save(
        tmp_path / "out", mode="exact", rank=9, method="dare_ties", density=0.5, seed=5, space="core"
    )
    composed(mods).save(
        tmp_path / "again", mode="exact", rank=9, method="dare_ties", density=0.5, seed=5, space="core"
    )
    got = peft_merged_deltas(tmp_path / "out")
    Q = bases([mods[n] for n in NAMES])
    for layer, taus in lora_taus([mods[n] for n in NAMES], COEFS).items():
        QB, QA = Q[layer]
        rng = layer_rng(5, f"base_model.model.{layer}")
        pruned = torch.stack([torch.from_numpy(prune_random(project(t, QB, QA), 0.5, rng)) for t in taus])
        mask = merge_utils.calculate_majority_sign_mask(pruned, "total")
        want = QB @ merge_utils.disjoint_merge(pruned, mask).numpy() @ QA.T
        np.testing.assert_allclose(got[layer], want, atol=1e-5, rtol=0)
    a, b = lora_factors(tmp_path / "out"), lora_factors(tmp_path / "again")
    assert all(np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1]) for k in a)


def test_ia3_core_space_is_the_vectors_themselves(mods, tmp_path):
    pem = pemarith.load(mods["ia"], "ia") - 0.7 * pemarith.load(mods["ib"], "ib")
    pem.save(tmp_path / "core", method="ties", density=0.5, space="core")
    pem.save(tmp_path / "dense", method="ties", density=0.5)
    got, want = peft_ia3_vectors(tmp_path / "core"), peft_ia3_vectors(tmp_path / "dense")
    for layer in want:
        np.testing.assert_array_equal(got[layer], want[layer])
    assert set(ia3_vectors(tmp_path / "core")) == set(want)


def run_compose(mods, out, *args):
    return subprocess.run(
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
            str(out),
            *args,
            "a - b",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_space_core(mods, tmp_path):
    proc = run_compose(
        mods,
        tmp_path / "out",
        "--mode",
        "exact",
        "--rank",
        "6",
        "--method",
        "ties",
        "--density",
        "0.5",
        "--space",
        "core",
    )
    assert proc.returncode == 0, proc.stderr
    assert "method    ties (density 0.5, majority_sign total, space core)" in proc.stdout
    proc = run_compose(mods, tmp_path / "lin", "--mode", "exact", "--rank", "6", "--space", "core")
    assert proc.returncode == 0 and "method    linear (space core)" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--space", "core"], "linear in core space writes a LoRA by a truncated SVD"),
        (["--space", "core", "--mode", "exact"], "use --mode exact --rank R"),
        (["--method", "ties", "--density", "0.5", "--space", "core"], "use --mode exact --rank R"),
        (["--space", "cor", "--mode", "exact", "--rank", "4"], "invalid choice: 'cor'"),
    ],
)
def test_bad_core_options_are_one_line(mods, tmp_path, args, message):
    proc = run_compose(mods, tmp_path / "out", *args)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr and not (tmp_path / "out").exists()
