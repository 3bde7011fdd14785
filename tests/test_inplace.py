"""In-place sweeps: a composition written into a live PEFT model gives the same logits as the
composed adapter saved by ``PEM.save`` and loaded fresh by ``PeftModel.from_pretrained``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pemarith
from pemarith.errors import CompatibilityError, PemarithError
from pemarith.hf.inplace import LiveAdapter

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


# ----------------------------------------------------------------------------- tiny models


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    """A 2-layer BERT classifier (3 labels); the same weights for the same seed."""
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=3,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


BUILD = {"bert": tiny_bert, "llama": tiny_llama}
INPUT = torch.randint(1, 64, (3, 9), generator=torch.Generator().manual_seed(0))


def _randomize(model: torch.nn.Module, seed: int, names: tuple[str, ...]) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "ia3" in n else 0.0))


def make_adapter(path: Path, arch: str, kind: str, seed: int, r: int = 4, alpha: int = 8) -> Path:
    """A random adapter on the tiny model ``arch`` (BERT ones carry a classifier head)."""
    task = "SEQ_CLS" if arch == "bert" else "CAUSAL_LM"
    if kind == "lora":
        targets = ["query", "value"] if arch == "bert" else ["q_proj", "v_proj", "down_proj"]
        cfg = peft.LoraConfig(
            task_type=task, r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False
        )
    else:
        targets = (
            ["key", "value", "intermediate.dense"] if arch == "bert" else ["k_proj", "v_proj", "down_proj"]
        )
        ff = ["intermediate.dense"] if arch == "bert" else ["down_proj"]
        cfg = peft.IA3Config(task_type=task, target_modules=targets, feedforward_modules=ff)
    model = peft.get_peft_model(BUILD[arch](), cfg)
    _randomize(model, seed, ("lora_", "ia3_l", "modules_to_save"))
    model.save_pretrained(str(path))
    return path


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def fresh_logits(pem, arch: str, out: Path, mode: str, rank: int | None = None) -> torch.Tensor:
    """The reference: save the composition, load base + adapter from disk."""
    pem.save(out, mode=mode, rank=rank)
    model = peft.PeftModel.from_pretrained(BUILD[arch](), str(out)).eval()
    return logits(model)


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    root = tmp_path_factory.mktemp("inplace")
    return {
        ("bert", "lora", "a"): make_adapter(root / "bl_a", "bert", "lora", 1),
        ("bert", "lora", "b"): make_adapter(root / "bl_b", "bert", "lora", 2, alpha=16),
        ("bert", "lora", "r2"): make_adapter(root / "bl_r2", "bert", "lora", 3, r=2, alpha=4),
        ("bert", "ia3", "a"): make_adapter(root / "bi_a", "bert", "ia3", 4),
        ("bert", "ia3", "b"): make_adapter(root / "bi_b", "bert", "ia3", 5),
        ("llama", "lora", "a"): make_adapter(root / "ll_a", "llama", "lora", 6),
        ("llama", "lora", "b"): make_adapter(root / "ll_b", "llama", "lora", 7),
        ("llama", "ia3", "a"): make_adapter(root / "li_a", "llama", "ia3", 8),
        ("llama", "ia3", "b"): make_adapter(root / "li_b", "llama", "ia3", 9),
    }


CASES = [
    # arch, kind, mode, expression, second module
    ("bert", "lora", "factorwise", "l*a + (1-l)*b", "b"),
    ("bert", "lora", "exact", "l*a + (1-l)*b", "b"),
    ("bert", "lora", "exact", "l*a + (1-l)*b", "r2"),  # different ranks: r = 4 + 2
    ("bert", "ia3", "factorwise", "l*a + (1-l)*b", "b"),
    ("llama", "lora", "factorwise", "(1+l)*a - l*b", "b"),
    ("llama", "lora", "exact", "(1+l)*a - l*b", "b"),
    ("llama", "ia3", "factorwise", "(1+l)*a - l*b", "b"),
]


@pytest.mark.parametrize("arch, kind, mode, expr, second", CASES)
def test_inplace_matches_fresh_load(mods, tmp_path, arch, kind, mode, expr, second):
    modules = {"a": mods[(arch, kind, "a")], "b": mods[(arch, kind, second)]}
    probe = pemarith.compose(expr, modules, mode=mode, l=0.5)
    live = LiveAdapter(BUILD[arch](), probe.output_config(mode, None))
    # Several values through the same live model: no state may leak from one to the next.
    for i, value in enumerate((0.3, 1.0, 0.0, 0.7)):
        pem = pemarith.compose(expr, modules, mode=mode, l=value)
        live.load(pem, mode)
        expected = fresh_logits(pem, arch, tmp_path / f"v{i}", mode)
        torch.testing.assert_close(logits(live.model), expected, atol=1e-5, rtol=1e-4)
    assert live.loads == 4


def test_exact_rank_truncation_and_lower_rank_reference(mods, tmp_path):
    """A truncated-SVD composition, then one module alone (rank 2 into a rank-6 live adapter:
    zero-padded, scaling folded)."""
    modules = {"a": mods[("bert", "lora", "a")], "b": mods[("bert", "lora", "r2")]}
    pem = pemarith.compose("0.4*a + 0.6*b", modules, mode="exact", rank=3)
    live = LiveAdapter(
        tiny_bert(), pemarith.compose("0.4*a + 0.6*b", modules, mode="exact").output_config("exact", None)
    )
    live.load(pem, "exact", 3)
    torch.testing.assert_close(
        logits(live.model), fresh_logits(pem, "bert", tmp_path / "svd", "exact", 3), atol=1e-5, rtol=1e-4
    )
    alone = pemarith.load(modules["b"], "b")
    live.load(alone, "exact")
    expected = logits(peft.PeftModel.from_pretrained(tiny_bert(), str(modules["b"])).eval())
    torch.testing.assert_close(logits(live.model), expected, atol=1e-5, rtol=1e-4)


def test_factorwise_module_alone_and_base(mods):
    """A single module loaded in place equals loading it directly; base() disables it."""
    a, b = mods[("bert", "lora", "a")], mods[("bert", "lora", "b")]
    live = LiveAdapter(tiny_bert(), pemarith.compose("0.5*a + 0.5*b", {"a": a, "b": b}).output_config())
    live.load(pemarith.load(b, "b"))
    torch.testing.assert_close(
        logits(live.model),
        logits(peft.PeftModel.from_pretrained(tiny_bert(), str(b)).eval()),
        atol=1e-5,
        rtol=1e-4,
    )
    with live.base() as model:
        torch.testing.assert_close(logits(model), logits(tiny_bert()), atol=1e-6, rtol=1e-5)


def test_partial_or_foreign_tensors_are_refused(mods):
    a = mods[("llama", "lora", "a")]
    pem = pemarith.load(a, "a")
    live = LiveAdapter(tiny_llama(), pem.output_config())
    tensors = list(pem.iter_tensors())
    with pytest.raises(CompatibilityError, match="does not write"):
        live.load_tensors(tensors[:-1], pem.output_config())
    with pytest.raises(CompatibilityError, match="lacks"):
        live.load_tensors([("base_model.model.nope.lora_A.weight", tensors[0][1])], pem.output_config())
    ia3 = pemarith.load(mods[("llama", "ia3", "a")], "x")
    with pytest.raises(CompatibilityError, match="peft_type"):
        live.load(ia3)


def test_live_adapter_takes_a_base_model(mods):
    pem = pemarith.load(mods[("llama", "lora", "a")], "a")
    model = peft.PeftModel.from_pretrained(tiny_llama(), str(mods[("llama", "lora", "a")]))
    with pytest.raises(PemarithError, match="base model"):
        LiveAdapter(model, pem.output_config())


def test_a_larger_composition_rebuilds_the_live_adapter(mods, tmp_path):
    """Built for one rank-4 module, then given an exact composition of rank 4 + 2."""
    modules = {"a": mods[("bert", "lora", "a")], "b": mods[("bert", "lora", "r2")]}
    live = LiveAdapter(tiny_bert(), pemarith.load(modules["a"], "a").output_config())
    pem = pemarith.compose("0.3*a + 0.7*b", modules, mode="exact")
    live.load(pem, "exact")
    assert live.config["r"] == 6
    torch.testing.assert_close(
        logits(live.model), fresh_logits(pem, "bert", tmp_path / "x", "exact"), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_merging_leaves_no_drift(mods, kind):
    """Merged for speed, unmerged exactly: after many values the base weights are bit-identical,
    and the unmerged live model computes the same logits as the merged one."""
    modules = {"a": mods[("llama", kind, "a")], "b": mods[("llama", kind, "b")]}
    base = tiny_llama()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    live = LiveAdapter(base, pemarith.compose("l*a + (1-l)*b", modules, l=0.5).output_config())
    unmerged = LiveAdapter(tiny_llama(), live.config, merge=False)
    for value in (0.1, 0.9, -0.5, 2.0, 0.3):
        pem = pemarith.compose("l*a + (1-l)*b", modules, l=value)
        live.load(pem)
        unmerged.load(pem)
        assert live.merged and not unmerged.merged
        torch.testing.assert_close(logits(live.model), logits(unmerged.model), atol=1e-5, rtol=1e-4)
    with live.base() as model:
        torch.testing.assert_close(logits(model), logits(tiny_llama()), atol=0, rtol=0)
    assert live.merged  # merged again after the base-model context
    live._unmerge()
    after = live.model.unload().state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_the_kinds_live_rules():
    """What must agree between a live adapter and a composition, and how each saved tensor goes
    in: the kinds' table (``live_check``, ``live_tensor``), not rules of the in-place module."""
    from pemarith.hf.inplace import incompatibilities
    from pemarith.kinds import KINDS

    lora = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q", "v"]}
    assert incompatibilities(lora, {**lora, "target_modules": ("v", "q"), "r": 4}) == []  # sets; smaller rank
    assert incompatibilities(lora, {**lora, "r": 16}) == ["rank 16 > live rank 8"]
    assert incompatibilities(lora, {**lora, "target_modules": ["q"]}) == [
        "target_modules ['q', 'v'] vs ['q']"
    ]
    assert incompatibilities(lora, {"peft_type": "IA3"}) == ["peft_type LORA vs IA3"]
    with pytest.raises(CompatibilityError, match="rank_pattern is not supported in place"):
        incompatibilities(lora, {**lora, "rank_pattern": {"q": 2}})
    rule = KINDS["LORA"].live_tensor
    new = {**lora, "r": 4, "lora_alpha": 16}  # s = 4 against the live 2
    assert rule("base_model.model.l.q.lora_A.weight", lora, new) == (1.0, 0)
    assert rule("base_model.model.l.q.lora_B.weight", lora, new) == (2.0, 1)
    assert rule("base_model.model.emb.lora_embedding_B", lora, new) == (2.0, 1)
    assert rule("base_model.model.head.weight", lora, new) == (1.0, None)  # modules_to_save
    ia3 = {"peft_type": "IA3", "target_modules": ["k"], "feedforward_modules": []}
    assert incompatibilities(ia3, {**ia3, "feedforward_modules": ["k"]}) == [
        "feedforward_modules [] vs ['k']"
    ]
    assert KINDS["IA3"].live_tensor("base_model.model.k.ia3_l", ia3, ia3) == (1.0, None)
