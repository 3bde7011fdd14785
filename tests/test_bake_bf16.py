"""bake into a bfloat16 / float16 base: merged in float32 on the raw bits, within one ulp of the
float64 merge rounded once (what ml_dtypes gives), the untouched tensors byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_adapters import TinyModel, lora_deltas, make_ia3, make_lora
from safetensors.numpy import load_file
from safetensors.torch import save_file

import pemarith
from pemarith.bake import bake


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", [make_lora, make_ia3])
@pytest.mark.parametrize("block", [None, 5, 24])
def test_half_precision_base(tmp_path, monkeypatch, dtype, make, block):
    """Also widened, merged and rounded back a few rows at a time (``block`` elements)."""
    import ml_dtypes

    if block is not None:
        monkeypatch.setattr("pemarith.bake.BLOCK_ELEMENTS", block)

    base = tmp_path / "base"
    base.mkdir()
    state = {k: v.to(dtype).contiguous() for k, v in TinyModel().state_dict().items()}
    save_file(state, str(base / "model.safetensors"), metadata={"format": "pt"})
    adapter = make(tmp_path / "a", seed=3)
    report = bake(pemarith.load(adapter, "a"), base, tmp_path / "out")
    npdt = ml_dtypes.bfloat16 if dtype == torch.bfloat16 else np.float16
    before = {k: v.view(torch.int16).numpy().view(npdt) for k, v in state.items()}
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert report.merged
    changed = {k for keys in report.merged.values() for k in keys}
    for key, old in before.items():
        got = after[key].view(np.uint16) if after[key].dtype != np.uint16 else after[key]
        got = got.view(npdt)
        if key not in changed:
            assert got.tobytes() == old.tobytes(), key
            continue
        w = old.astype(np.float64)
        if make is make_lora:
            layer = key.removesuffix(".weight")
            d = lora_deltas(adapter)[layer]
            want = w + (d.T if layer == "emb" else d)
        else:
            want = (
                pemarith.load(adapter, "a")
                .adapters["a"]
                .tensor(f"base_model.model.{key.removesuffix('.weight').removesuffix('.bias')}.ia3_l")
                .astype(np.float64)
            )
            want = w * (want.reshape(-1) if key.endswith(".bias") else want)
        want = want.astype(npdt)
        ulps = np.abs(got.view(np.int16).astype(np.int32) - want.view(np.int16).astype(np.int32))
        assert ulps.max() <= 1 and (ulps == 0).mean() > 0.95, key
