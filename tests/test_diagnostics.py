"""Diagnostics (similarity, interference) against dense updates computed by hand from real
PEFT adapters, and the ``pemarith diagnose`` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_adapters import ia3_vectors, lora_deltas, make_ia3, make_lora, tensors
from safetensors.numpy import save_file

import pemarith
from pemarith.diagnostics import diagnose

PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def mods(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diag")
    out = {
        "a": make_lora(root / "a", seed=1),
        "b": make_lora(root / "b", seed=2, alpha=4, rslora=True),  # another scaling
        "r8": make_lora(root / "r8", seed=3, r=8),
        "ia": make_ia3(root / "ia", seed=4),
        "ib": make_ia3(root / "ib", seed=5),
    }
    # "shared": b's B factors with a's A factors, as if both had started from one A init and
    # A had not moved in training (written as a PEFT directory: a's config, safetensors weights)
    shared = root / "shared"
    shutil.copytree(out["a"], shared)
    ta, tb = tensors(out["a"]), tensors(out["b"])
    save_file(
        {k: (tb[k] if "_B" in k else ta[k]) for k in ta},
        str(shared / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    out["shared"] = shared
    return out


def flat(deltas: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([deltas[k].ravel() for k in sorted(deltas)])


def cos(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_gram_and_cosines_are_those_of_the_dense_updates(mods):
    names = ("a", "b", "r8")
    d = diagnose({n: mods[n] for n in names})
    dense = {n: lora_deltas(mods[n]) for n in names}
    assert sorted(d.gram) == sorted(PREFIX + k for k in dense["a"])
    for layer, G in d.gram.items():
        key = layer.removeprefix(PREFIX)
        want = np.array([[np.sum(dense[i][key] * dense[j][key]) for j in names] for i in names])
        np.testing.assert_allclose(G, want, rtol=1e-9, atol=1e-12)
        assert d.pair_cosines("a", "r8")[layer] == pytest.approx(
            cos(dense["a"][key].ravel(), dense["r8"][key].ravel()), abs=1e-12
        )
    whole = d.cosine()
    for i, x in enumerate(names):
        assert d.norms()[x] == pytest.approx(np.linalg.norm(flat(dense[x])), rel=1e-12)
        for j, y in enumerate(names):
            assert whole[i, j] == pytest.approx(cos(flat(dense[x]), flat(dense[y])), abs=1e-12)


def test_retained_norm_of_a_composition(mods):
    pem = pemarith.compose("0.3*a - 0.9*b + 0.5*r8", {n: mods[n] for n in ("a", "b", "r8")}, mode="exact")
    d = diagnose(pem)
    c = {"a": 0.3, "b": -0.9, "r8": 0.5}
    dense = {n: flat(lora_deltas(mods[n])) for n in c}
    merged = sum(c[n] * dense[n] for n in c)
    want = np.linalg.norm(merged) / sum(abs(c[n]) * np.linalg.norm(dense[n]) for n in c)
    assert d.retained() == pytest.approx(want, rel=1e-12)
    assert not d.factorwise  # ranks 4 and 8: factorwise does not apply, and is not reported
    assert d.cross_ratio() is None and d.factorwise_cosine() is None


@pytest.mark.parametrize("expr", ["0.6*a + 0.4*b", "a - 0.5*b", "0.5*a + 0.5*shared"])
def test_factorwise_parts_match_the_composed_adapter(mods, tmp_path, expr):
    """F is what `compose` writes in factorwise mode; its own and cross terms split it."""
    used = {n: mods[n] for n in ("a", "b", "shared") if n in expr}
    pem = pemarith.compose(expr, used)
    pem.save(tmp_path / "fw", mode="factorwise")
    F = flat(lora_deltas(tmp_path / "fw"))
    dense = {n: flat(lora_deltas(p)) for n, p in used.items()}
    E = sum(c * dense[n] for n, c in pem.terms.items())
    own = sum(c * abs(c) * dense[n] for n, c in pem.terms.items())
    d = diagnose(pem)
    assert d.factorwise_cosine() == pytest.approx(cos(F, E), abs=1e-6)  # F written in float32
    assert d.cross_ratio() == pytest.approx(np.linalg.norm(F - own) / np.linalg.norm(own), rel=1e-6)
    for layer in d.gram:  # per layer too
        key = layer.removeprefix(PREFIX)
        Fl = lora_deltas(tmp_path / "fw")[key].ravel()
        El = sum(c * lora_deltas(used[n])[key].ravel() for n, c in pem.terms.items())
        assert d.factorwise_cosine(layer) == pytest.approx(cos(Fl, El), abs=1e-6)


def test_a_shared_A_makes_factorwise_a_rescaled_exact_update(mods):
    """With A_1 = A_2, F = (sum |c_j|) E exactly: cos 1, whatever the signs."""
    for expr in ("0.5*a + 0.5*shared", "a - 0.3*shared"):
        d = diagnose(pemarith.compose(expr, {"a": mods["a"], "shared": mods["shared"]}))
        assert d.factorwise_cosine() == pytest.approx(1.0, abs=1e-12)
    unrelated = diagnose(pemarith.compose("0.5*a + 0.5*b", {"a": mods["a"], "b": mods["b"]}))
    assert unrelated.factorwise_cosine() < 0.99


def test_ia3_offsets_from_the_identity(mods):
    d = diagnose(pemarith.compose("a - b", {"a": mods["ia"], "b": mods["ib"]}))
    va, vb = ia3_vectors(mods["ia"]), ia3_vectors(mods["ib"])
    for layer, G in d.gram.items():
        x, y = (va[layer.removeprefix(PREFIX)] - 1).ravel(), (vb[layer.removeprefix(PREFIX)] - 1).ravel()
        np.testing.assert_allclose(G, [[x @ x, x @ y], [y @ x, y @ y]], rtol=1e-9)
    x, y = flat({k: v - 1 for k, v in va.items()}), flat({k: v - 1 for k, v in vb.items()})
    assert d.retained() == pytest.approx(np.linalg.norm(x - y) / (np.linalg.norm(x) + np.linalg.norm(y)))
    assert not d.factorwise and d.factorwise_cosine() is None  # (IA)3 has no cross terms


def test_mismatched_modules_are_refused(mods):
    with pytest.raises(pemarith.module.CompatibilityError, match="PEFT type"):
        diagnose({"a": mods["a"], "ia": mods["ia"]})
    with pytest.raises(pemarith.module.CompatibilityError, match="at least one"):
        diagnose({})


# ----------------------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pemarith.cli", "diagnose", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_json_is_the_library_result(mods):
    proc = cli(
        "-m",
        f"a={mods['a']}",
        "-m",
        f"b={mods['b']}",
        "-m",
        f"c={mods['r8']}",
        "--set",
        "l=0.3",
        "--json",
        "l*a + (1-l)*b",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    d = diagnose(
        pemarith.compose("0.3*a + 0.7*b", {"a": mods["a"], "b": mods["b"]})
        + 0 * pemarith.load(mods["r8"], "c")
    )
    assert out["expression"] == "0.3*a + 0.7*b"
    assert out["coefficients"] == {"a": 0.3, "b": 0.7, "c": 0.0}  # c is compared, not composed
    assert out["cosine"]["a"]["c"] == pytest.approx(float(d.cosine()[0, 2]))
    assert out["retained"] == pytest.approx(d.retained())
    assert out["factorwise_cosine"] == pytest.approx(d.factorwise_cosine())
    assert set(out["layers"]) == set(d.gram)


def test_cli_text(mods):
    proc = cli("-m", f"a={mods['a']}", "-m", f"s={mods['shared']}", "--layers", "0.5*a + 0.5*s")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "cosine similarity" in text and "per layer, a~s" in text
    assert "cos(F, E) 1," in text  # a shared A: factorwise only rescales
    from pemarith.signs import shorten

    short = shorten(list(diagnose({"a": mods["a"]}).gram))
    assert all(not v.startswith(PREFIX) for v in short.values())  # layer names cut to what differs
    rows = [line for line in text.splitlines() if line.split() and line.split()[0] in short.values()]
    assert len(rows) == 3 and "conflict" in text
    assert "-> " in text and "sign conflict" in text and "survives at density 0.2" in text
    d = diagnose({"a": mods["a"]})
    assert f"a {d.norms()['a']:.4g}" in text


@pytest.mark.parametrize(
    "args, needle",
    [
        ((), "no modules"),
        (("-m", "a=LORA_DIR", "--set", "l=1"), "no expression"),
        (("-m", "a=LORA_DIR", "-m", "i=IA_DIR"), "PEFT type"),
        (("-m", "a=LORA_DIR", "a + x"), "unknown name 'x'"),
        (("-m", "a=/nonexistent/dir"), "/nonexistent/dir"),
    ],
)
def test_cli_errors_are_one_line(mods, args, needle):
    args = tuple(x.replace("LORA_DIR", str(mods["a"])).replace("IA_DIR", str(mods["ia"])) for x in args)
    proc = cli(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pemarith: error: ") and needle in lines[0], lines


def test_cli_imports_no_torch(mods):
    code = (
        "import sys; from pemarith.cli import main; "
        f"main(['diagnose', '-m', 'a={mods['a']}', '-m', 'b={mods['b']}', 'a - b']); "
        "print('HEAVY', [m for m in ('torch', 'transformers', 'peft') if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# -- signs: what TIES and DARE act on ------------------------------------------------------------


def _dense_taus(paths: dict[str, Path], coefs: dict[str, float]) -> dict[str, list[np.ndarray]]:
    """Layer -> [c_i s_i B_i A_i], computed here from the safetensors files and the configs."""
    import json

    from safetensors.numpy import load_file

    out: dict[str, list[np.ndarray]] = {}
    for name, path in paths.items():
        cfg = json.loads((path / "adapter_config.json").read_text())
        s = cfg["lora_alpha"] / (np.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
        t = load_file(str(path / "adapter_model.safetensors"))
        for key in sorted(k for k in t if k.endswith(("lora_A.weight", "lora_embedding_A"))):
            layer = key.rsplit(".", 2 if key.endswith(".weight") else 1)[0]
            bkey = key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")
            out.setdefault(layer, []).append(coefs[name] * s * (t[bkey].astype(np.float64) @ t[key]))
    return out


def test_sign_conflicts_and_survival_match_a_hand_count(mods, tmp_path):
    import pemarith
    from pemarith.methods import majority_sign_mask, prune_magnitude
    from pemarith.signs import sign_report

    pem = pemarith.compose("0.7*a - 0.4*b", {"a": mods["a"], "b": mods["b"]})
    rep = sign_report(pem, 0.3)
    taus = _dense_taus({"a": mods["a"], "b": mods["b"]}, {"a": 0.7, "b": -0.4})
    conflicts = shared = kept_a = nz_a = 0
    for ta, tb in taus.values():
        both = (ta != 0) & (tb != 0)
        shared += both.sum()
        conflicts += (both & (np.sign(ta) != np.sign(tb))).sum()
        pruned = np.stack([prune_magnitude(ta, 0.3), prune_magnitude(tb, 0.3)])
        kept_a += ((pruned[0] != 0) & majority_sign_mask(pruned)[0]).sum()
        nz_a += (ta != 0).sum()
    assert len(rep.layers) == len(taus) == 3
    assert rep.conflict() == pytest.approx(conflicts / shared)
    assert rep.survives()["a"] == pytest.approx(kept_a / nz_a)
    # a module against its own negation conflicts everywhere; with itself, nowhere, and at
    # density 1 TIES keeps every entry
    twin = tmp_path / "twin"
    shutil.copytree(mods["a"], twin)
    a, a2 = pemarith.load(mods["a"], "a"), pemarith.load(twin, "twin")
    assert sign_report(a - a2, 1.0).conflict() == 1.0
    same = sign_report(a + a2, 1.0)
    assert same.conflict() == 0.0 and same.survives() == {"a": 1.0, "twin": 1.0}


def test_sign_report_rejects_a_bad_density(mods):
    import pemarith
    from pemarith.errors import PemarithError
    from pemarith.signs import sign_report

    with pytest.raises(PemarithError, match=r"density must be in \(0, 1\]"):
        sign_report(pemarith.load(mods["a"], "a") + pemarith.load(mods["b"], "b"), 1.5)


def test_shorten_layer_names():
    from pemarith.signs import shorten

    names = [f"base_model.model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert list(shorten(names).values()) == [
        "0.self_attn.q_proj",
        "0.self_attn.v_proj",
        "1.self_attn.q_proj",
        "1.self_attn.v_proj",
    ]
    assert shorten(["x.a.q", "x.b.q"]) == {"x.a.q": "a", "x.b.q": "b"}
    assert shorten(["only"]) == {"only": "only"}
