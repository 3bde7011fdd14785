"""The PEFT adapters people actually train, built with real PEFT on a tiny Llama (issue 16, items
5, 6, 12, 14): inits that rewrite the base are refused by name, tied embeddings are refused,
all-linear composes with the same short list, and frozen base copies do not block negation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import LlamaConfig, LlamaForCausalLM

import pemarith
from pemarith.errors import AdapterError, CompatibilityError

CFG = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
)


def base(tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CFG, tie_word_embeddings=tied))


def train_like(model, seed: int) -> None:
    """Give every LoRA factor random values, as training would (PEFT starts B at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def make(path: Path, seed: int = 1, tied: bool = False, **lora) -> Path:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base(tied), LoraConfig(r=2, lora_alpha=4, **lora))
    if lora.get("init_lora_weights", True) in (True, "gaussian"):
        train_like(model, seed)
    model.save_pretrained(str(path))
    return path


def merged_weights(adapter: Path) -> dict[str, torch.Tensor]:
    """The base with ``adapter`` merged by PEFT itself."""
    from peft import PeftModel

    m = PeftModel.from_pretrained(base(), str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
def test_inits_that_rewrite_the_base_are_refused_by_name(tmp_path, init):
    a = make(tmp_path / "a", init_lora_weights=init, target_modules=["q_proj", "v_proj"])
    with pytest.raises(
        AdapterError,
        match=f"init_lora_weights='{init}' rewrites the base weights.*"
        "path_initial_model_for_weight_conversion",
    ):
        pemarith.load(a)


def test_unknown_inits_are_refused_and_plain_ones_compose(tmp_path):
    a = make(tmp_path / "a", target_modules=["q_proj", "v_proj"])
    cfg = json.loads((a / "adapter_config.json").read_text())
    for init in ("gaussian", "eva", "orthogonal", False):
        (a / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": init}))
        pemarith.load(a).save(tmp_path / f"out_{init}")
    for init in ("loftq", "corda", "lora_ga", "something_new"):
        (a / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": init}))
        with pytest.raises(AdapterError, match="init_lora_weights"):
            pemarith.load(a)


def test_a_converted_pissa_adapter_composes_correctly(tmp_path):
    """PEFT's conversion turns PiSSA into a plain LoRA of the original base; -a is then right."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        base(), LoraConfig(r=2, lora_alpha=4, init_lora_weights="pissa", target_modules=["q_proj", "v_proj"])
    )
    model.peft_config["default"].init_lora_weights = True  # the pristine copy, as PEFT's docs do
    model.save_pretrained(str(tmp_path / "init"))
    model.peft_config["default"].init_lora_weights = "pissa"
    train_like(model, seed=3)
    model.save_pretrained(
        str(tmp_path / "pissa"), path_initial_model_for_weight_conversion=str(tmp_path / "init")
    )
    a = pemarith.load(tmp_path / "pissa", "a")
    (-a).save(tmp_path / "neg", mode="exact")
    w0 = base().state_dict()
    plus, minus = merged_weights(tmp_path / "pissa"), merged_weights(tmp_path / "neg")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(plus[key], w0[key])
    torch.testing.assert_close(minus[key] - w0[key], -(plus[key] - w0[key]), atol=1e-5, rtol=1e-4)


def test_tied_embedding_and_lm_head_are_refused(tmp_path):
    a = make(
        tmp_path / "a",
        tied=True,
        target_modules=["embed_tokens", "lm_head", "q_proj"],
        ensure_weight_tying=True,
    )
    with pytest.raises(CompatibilityError, match="ensure_weight_tying"):
        (-pemarith.load(a)).save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_all_linear_composes_with_the_same_short_list(tmp_path):
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    a = make(tmp_path / "a", seed=1, target_modules="all-linear")
    b = make(tmp_path / "b", seed=1, target_modules=names)
    assert json.loads((a / "adapter_config.json").read_text())["target_modules"] != names
    for k, v in load_file(str(a / "adapter_model.safetensors")).items():
        np.testing.assert_array_equal(v, load_file(str(b / "adapter_model.safetensors"))[k])
    (pemarith.load(a, "a") - pemarith.load(b, "b")).save(tmp_path / "zero", mode="exact")
    out = load_file(str(tmp_path / "zero" / "adapter_model.safetensors"))
    w = merged_weights(tmp_path / "zero")
    for k, v in base().state_dict().items():
        torch.testing.assert_close(w[k], v, atol=1e-6, rtol=0)
    assert out


def test_frozen_embedding_copies_do_not_block_negation(tmp_path):
    """save_embedding_layers (PEFT's "auto" when embed_tokens is targeted) stores the frozen
    embedding: -a and a - b work, the copy is carried through, and PEFT merges the right update."""
    a = make(tmp_path / "a", seed=1, target_modules=["embed_tokens", "q_proj"])
    b = make(tmp_path / "b", seed=2, target_modules=["embed_tokens", "q_proj"])
    frozen = "base_model.model.model.embed_tokens.base_layer.weight"
    assert frozen in load_file(str(a / "adapter_model.safetensors"))
    A, B = pemarith.load(a, "a"), pemarith.load(b, "b")
    (-A).save(tmp_path / "neg")
    (A - B).save(tmp_path / "diff", mode="exact")
    out = load_file(str(tmp_path / "neg" / "adapter_model.safetensors"))
    np.testing.assert_array_equal(out[frozen], load_file(str(a / "adapter_model.safetensors"))[frozen])
    w0 = base().state_dict()
    wa, wb = merged_weights(a), merged_weights(b)
    wn, wd = merged_weights(tmp_path / "neg"), merged_weights(tmp_path / "diff")
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        torch.testing.assert_close(wn[key] - w0[key], -(wa[key] - w0[key]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            wd[key] - w0[key], (wa[key] - w0[key]) - (wb[key] - w0[key]), atol=1e-5, rtol=1e-4
        )
    # copies of different bases are refused
    t = load_file(str(b / "adapter_model.safetensors"))
    t[frozen] = t[frozen] + 1
    from safetensors.numpy import save_file

    save_file(t, str(b / "adapter_model.safetensors"))
    with pytest.raises(CompatibilityError, match="different copies of this frozen base weight"):
        (A - pemarith.load(b, "b")).save(tmp_path / "bad")
