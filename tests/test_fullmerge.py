"""Weight arithmetic on fully fine-tuned checkpoints (the FFT rows of 4.2), on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_sweep import _data_dir, tiny_bert_dir  # noqa: F401  (a module-scoped fixture)

from pemarith.errors import PemarithError

pytestmark = pytest.mark.skipif(_data_dir() is None, reason="needs ../shared/data (SST-2)")


def _finetuned(base_dir: Path, out: Path, seed: int) -> Path:
    """The base model with every float weight moved by seeded noise, saved like a fine-tune."""
    import torch
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def checkpoints(tiny_bert_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("fft")
    return {"a": _finetuned(tiny_bert_dir, root / "a", 1), "b": _finetuned(tiny_bert_dir, root / "b", 2)}


def _logits(model, tok, texts):
    import torch

    with torch.inference_mode():
        return model(**tok(texts, return_tensors="pt", padding=True)).logits


def test_live_weights_are_the_weighted_sum(checkpoints):
    import torch
    import transformers
    from safetensors.torch import load_file

    from pemarith.hf.fullmerge import FullSession

    session = FullSession(checkpoints, ["sst2"], data_dir=_data_dir(), limit=8)
    texts = ["a fine film .", "dull and long !"]
    sa, sb = (load_file(str(checkpoints[n] / "model.safetensors")) for n in ("a", "b"))
    for lam in (0.3, 1.0, -0.5):  # several values through one live model; a negative weight too
        session.load_terms({"a": lam, "b": 1 - lam})
        fresh = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoints["a"])
        fresh.load_state_dict(
            {k: lam * sa[k] + (1 - lam) * sb[k] if sa[k].is_floating_point() else sa[k] for k in sa},
            strict=False,
        )
        fresh.eval()
        tok = transformers.AutoTokenizer.from_pretrained(checkpoints["a"])
        torch.testing.assert_close(_logits(session._live(), tok, texts), _logits(fresh, tok, texts))


def test_full_sweep_writes_results_and_resumes(checkpoints, tmp_path):
    from pemarith.hf.fullmerge import FullSession, run_full_sweep

    session = FullSession(checkpoints, ["sst2"], data_dir=_data_dir(), limit=16)
    logs: list[str] = []
    res = run_full_sweep(
        session, "l*a + (1-l)*b", tmp_path / "sw", grid="0,0.5,1", plot=False, log=logs.append
    )
    assert res["evaluations"] == 3 and res["kind"] == "full"
    assert res["pick"]["l"] in (0.0, 0.5, 1.0) and "accuracy" in res["pick"]["test"]
    best = max(p["accuracy"] for p in res["validation"])
    assert res["pick"]["validation"]["accuracy"] == best
    assert json.loads((tmp_path / "sw" / "results.json").read_text())["pick"] == res["pick"]
    again = run_full_sweep(
        FullSession(checkpoints, ["sst2"], data_dir=_data_dir(), limit=16),
        "l*a + (1-l)*b",
        tmp_path / "sw",
        grid="0,0.5,1",
        plot=False,
        log=logs.append,
    )
    assert again["reused_from_cache"] == 4 and again["pick"] == res["pick"]  # 3 validation + 1 test


def test_unknown_checkpoint_name(checkpoints):
    from pemarith.hf.fullmerge import FullSession

    with pytest.raises(PemarithError, match="no checkpoint named 'c'"):
        FullSession(checkpoints, ["sst2"]).load_terms({"c": 1.0})
