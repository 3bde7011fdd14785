"""Merging modules into a base model's checkpoint (``pemarith bake``): the baked weights, loaded
into the plain model, must give the outputs of PEFT running the adapter on the base model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_adapters import TinyModel, make_ia3, make_lora, peft_forward, tokens
from safetensors.numpy import load_file
from safetensors.torch import save_file

import pemarith
from pemarith.bake import bake
from pemarith.errors import AdapterError, CompatibilityError, OutputError

SHARDS = {
    "model-00001-of-00002.safetensors": ("emb.weight", "lin0.weight", "lin0.bias"),
    "model-00002-of-00002.safetensors": ("lin1.weight", "lin1.bias", "head.weight", "head.bias", "step"),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """TinyModel's weights as two safetensors shards with an index, an integer buffer, the
    files a checkpoint directory holds, and a stale .bin that must not be copied."""
    root = tmp_path_factory.mktemp("base") / "tiny"
    root.mkdir()
    state = {**TinyModel().state_dict(), "step": torch.arange(5, dtype=torch.int64)}
    weight_map = {}
    for shard, keys in SHARDS.items():
        save_file({k: state[k].contiguous() for k in keys}, str(root / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, shard))
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    (root / "config.json").write_text('{"model_type": "tiny"}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (root / "2_Dense").mkdir()  # a sentence-transformers layer with weights of its own: kept
    save_file({"linear.weight": torch.ones(2, 2)}, str(root / "2_Dense" / "model.safetensors"))
    (root / "onnx").mkdir()  # an export of the unmerged model: left out
    (root / "onnx" / "model.onnx").write_bytes(b"unmerged")
    (root / "pytorch_model.bin").write_bytes(b"unmerged")
    return root


def baked_forward(out: Path, x: torch.Tensor) -> torch.Tensor:
    state = {}
    for shard in SHARDS:
        state.update({k: torch.from_numpy(v.copy()) for k, v in load_file(str(out / shard)).items()})
    assert state.pop("step").tolist() == [0, 1, 2, 3, 4]  # the integer buffer, byte for byte
    model = TinyModel()
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(x).double()


@pytest.mark.parametrize(
    "make, heads", [(make_lora, ()), (make_lora, ("head",)), (make_ia3, ()), (make_ia3, ("head",))]
)
@pytest.mark.parametrize("block", [None, 7, 40])
def test_one_module_matches_peft(base, tmp_path, monkeypatch, make, heads, block):
    """Also merged a few rows at a time (``block`` elements: one row, or several rows and a ragged
    last block), as large weights are."""
    if block is not None:
        monkeypatch.setattr("pemarith.bake.BLOCK_ELEMENTS", block)
    adapter = make(tmp_path / "a", seed=3, heads=heads)
    report = bake(pemarith.load(adapter, "a"), base, tmp_path / "out")
    x = tokens()
    torch.testing.assert_close(
        baked_forward(tmp_path / "out", x), peft_forward(adapter, x), atol=1e-5, rtol=1e-5
    )
    assert report.replaced == (["head.bias", "head.weight"] if heads else [])
    assert report.added == []


@pytest.mark.parametrize("mode", ["factorwise", "exact"])
def test_a_composition_matches_peft_on_the_composed_adapter(base, tmp_path, mode):
    a, b = (
        make_lora(tmp_path / "a", seed=1),
        make_lora(tmp_path / "b", seed=2, r=4 if mode == "factorwise" else 6),
    )
    pem = pemarith.compose("0.7*a - 0.4*b", {"a": a, "b": b}, mode=mode)
    pem.save(tmp_path / "composed", mode=mode)
    bake(pem, base, tmp_path / "out", mode=mode)
    x = tokens(seed=1)
    torch.testing.assert_close(
        baked_forward(tmp_path / "out", x), peft_forward(tmp_path / "composed", x), atol=1e-5, rtol=1e-5
    )


def test_directory_layout(base, tmp_path):
    report = bake(pemarith.load(make_ia3(tmp_path / "a", seed=0), "a"), base, tmp_path / "out")
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert (
        index["weight_map"] == json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    )
    assert index["metadata"]["total_size"] == sum((out / s).stat().st_size for s in SHARDS)
    assert (out / "config.json").read_text() == '{"model_type": "tiny"}'
    assert (out / "tokenizer" / "vocab.txt").is_file()
    assert (out / "2_Dense" / "model.safetensors").is_file()
    assert not (out / "pytorch_model.bin").exists() and not (out / "onnx").exists()
    assert report.skipped == ["onnx", "pytorch_model.bin"]
    # (IA)3 on lin0 scales its output, bias included; on lin1 (feedforward) the input only
    assert {k: sorted(v) for k, v in report.merged.items()} == {
        "lin0": ["lin0.bias", "lin0.weight"],
        "lin1": ["lin1.weight"],
    }
    untouched = load_file(str(base / "model-00002-of-00002.safetensors"))
    baked = load_file(str(out / "model-00002-of-00002.safetensors"))
    for key in ("head.weight", "head.bias", "lin1.bias", "step"):
        assert baked[key].tobytes() == untouched[key].tobytes(), key
    assert baked["lin1.weight"].tobytes() != untouched["lin1.weight"].tobytes()


def test_hf_checkpoint_round_trip(tmp_path):
    """A real sharded transformers checkpoint, a real PEFT LoRA with a new classifier head."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=3,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "base", max_shard_size="40KB")
    assert (tmp_path / "base" / "model.safetensors.index.json").is_file()
    peft_model = get_peft_model(
        BertForSequenceClassification.from_pretrained(tmp_path / "base"),
        LoraConfig(
            task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False
        ),
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "classifier" in name:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "adapter")
    report = bake(pemarith.load(tmp_path / "adapter", "a"), tmp_path / "base", tmp_path / "out")
    assert len(report.shards) > 1 and len(report.merged) == 4
    assert report.replaced == ["classifier.bias", "classifier.weight"]
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    want = (
        PeftModel.from_pretrained(
            BertForSequenceClassification.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
        )
        .eval()(x)
        .logits
    )
    got = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()(x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_errors_leave_nothing_on_disk(base, tmp_path):
    wide = make_lora(tmp_path / "wide", seed=0, targets=("lin0",))
    cfg = json.loads((wide / "adapter_config.json").read_text())
    # an adapter of another base: lin0 is adapted, but the checkpoint has no such layer
    other = tmp_path / "other"
    other.mkdir()
    tensors = load_file(str(wide / "adapter_model.safetensors"))
    from safetensors.numpy import save_file as np_save

    np_save(
        {k.replace("lin0", "lin9"): v for k, v in tensors.items()}, str(other / "adapter_model.safetensors")
    )
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["lin9"]}))
    with pytest.raises(CompatibilityError, match="'lin9' has no weight"):
        bake(pemarith.load(other, "o"), base, tmp_path / "out")
    # the right layer names but other shapes: found only while writing the first shard
    np_save(
        {k: np.concatenate([v, v], axis=0) if "lora_B" in k else v for k, v in tensors.items()},
        str(other / "adapter_model.safetensors"),
    )
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompatibilityError, match="lin0.weight: the LoRA update has shape"):
        bake(pemarith.load(other, "o"), base, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "wide"]  # no output, no temp dir
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        bake(pemarith.load(wide, "w"), base, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    # a name that several base weights end with is ambiguous, and said to be
    twice = tmp_path / "twice"
    twice.mkdir()
    state = {k: v.numpy() for k, v in TinyModel().state_dict().items()}
    np_save(
        {**{f"enc.{k}": v for k, v in state.items()}, **{f"dec.{k}": v for k, v in state.items()}},
        str(twice / "model.safetensors"),
    )
    with pytest.raises(CompatibilityError, match="matches several base weights"):
        bake(pemarith.load(wide, "w"), twice, tmp_path / "out3")
    with pytest.raises(AdapterError, match="no model.safetensors"):
        bake(pemarith.load(wide, "w"), tmp_path / "wide", tmp_path / "out2")


def test_cli(base, tmp_path):
    a, b = make_lora(tmp_path / "a", seed=1), make_lora(tmp_path / "b", seed=2)
    code = (
        "import sys; from pemarith.cli import main; "
        f"s = main(['bake', '--base', '{base}', '-m', 'a={a}', '-m', 'b={b}', '-o', '{tmp_path / 'out'}', "
        "'--set', 'l=0.3', 'l*a + (1-l)*b']); "
        "print('HEAVY', [m for m in ('torch', 'transformers', 'peft') if m in sys.modules], s)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY [] 0" in proc.stdout and "merged    3 layers (3 tensors)" in proc.stdout
    assert "not copied (other weight formats, unmerged): onnx, pytorch_model.bin" in proc.stdout
    pem = pemarith.compose("0.3*a + 0.7*b", {"a": a, "b": b})
    pem.save(tmp_path / "composed")
    x = tokens(seed=2)
    torch.testing.assert_close(
        baked_forward(tmp_path / "out", x), peft_forward(tmp_path / "composed", x), atol=1e-5, rtol=1e-5
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pemarith.cli",
            "bake",
            "--base",
            str(tmp_path / "a"),
            "-m",
            f"a={a}",
            "-o",
            str(tmp_path / "o2"),
            "a",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no model.safetensors" in proc.stderr


@pytest.mark.slow
@pytest.mark.ci
def test_real_minilm_checkpoint(tmp_path):
    """The packaged all-MiniLM-L6-v2 (a sentence-transformers BertModel directory: keys without
    the ``bert.`` prefix, a pooling folder) and a PEFT LoRA classifier trained on it: the baked
    directory loads with plain transformers and gives PEFT's logits."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pemarith.hf.models import resolve_model

    base = Path(resolve_model("minilm"))
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=2),
        LoraConfig(
            task_type="SEQ_CLS",
            r=8,
            lora_alpha=16,
            target_modules=["query", "value"],
            init_lora_weights=False,
        ),
    )
    model.save_pretrained(tmp_path / "adapter")
    report = bake(pemarith.load(tmp_path / "adapter", "a"), base, tmp_path / "out")
    assert len(report.merged) == 12 and set(report.added) == {"classifier.weight", "classifier.bias"}
    assert (tmp_path / "out" / "1_Pooling").is_dir() and (tmp_path / "out" / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    x = tok(["a wonderful, moving film", "dull and far too long"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = (
            PeftModel.from_pretrained(
                AutoModelForSequenceClassification.from_pretrained(base, num_labels=2), tmp_path / "adapter"
            )
            .eval()(**x)
            .logits
        )
        got = (
            AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", num_labels=2)
            .eval()(**x)
            .logits
        )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("block", [None, 100])
def test_gpt2_conv1d_fan_in_fan_out(tmp_path, monkeypatch, kind, block):
    """GPT-2 stores Conv1D weights as in x out (fan_in_fan_out): the update is applied transposed,
    also a block of rows at a time (``block`` elements)."""
    if block is not None:
        monkeypatch.setattr("pemarith.bake.BLOCK_ELEMENTS", block)
    from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "base")
    if kind == "lora":
        peft_cfg = LoraConfig(
            r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, init_lora_weights=False
        )
    else:
        peft_cfg = IA3Config(
            target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True
        )
    model = get_peft_model(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), peft_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape))
    model.save_pretrained(tmp_path / "adapter")
    bake(pemarith.load(tmp_path / "adapter", "a"), tmp_path / "base", tmp_path / "out")
    x = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = (
            PeftModel.from_pretrained(
                GPT2LMHeadModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
            )
            .eval()(x)
            .logits
        )
        got = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()(x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
