"""Parity with lm-evaluation-harness (issue 18): on one task file, pemarith's log-likelihood of every
choice of every row, and its accuracy, equal lm-eval's for the same base model and (composed) PEFT
adapter. Runs where lm-eval is installed (`pip install -e '.[parity]'`); skipped otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")

from test_taskfile import CLS, SENTENCES, _task_file, _write_sentiment  # noqa: E402
from test_train_eval import tiny_llama  # noqa: E402,F401

import pemarith  # noqa: E402
from pemarith.hf.data import load_split  # noqa: E402
from pemarith.hf.tasks import get_task  # noqa: E402

PROMPT = 'Review: "{{sentence}}"\nIs the sentiment of this review positive or negative?'


def _random_lora(base: str, out: Path, seed: int, scale: float) -> Path:
    import peft
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    lora.save_pretrained(out)
    return out


def _both(
    base: str, task_file: Path, adapter: Path, monkeypatch
) -> tuple[np.ndarray, np.ndarray, float, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from pemarith.hf.evaluate import evaluate, load_for_eval, score_choices

    task = get_task(str(task_file))
    ours = evaluate(base, str(task_file), adapter=adapter, progress=False)["metrics"]["accuracy"]
    model, tok = load_for_eval(base, task, adapter)
    ll = np.asarray(score_choices(model, tok, task, load_split(task, "validation"), 8, 256, False))
    monkeypatch.chdir(task_file.parent)  # lm-eval 0.4 reads relative data_files from the working directory
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={base},peft={adapter},dtype=float32",
        device="cpu",
        tasks=[task.name],
        batch_size=8,
        log_samples=True,
        task_manager=TaskManager(include_path=str(task_file.parent)),
    )
    samples = sorted(out["samples"][task.name], key=lambda s: s["doc_id"])
    theirs = np.asarray([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    return ll, theirs, ours, out["results"][task.name]["acc,none"]


def test_tiny_llama_composed_adapter_matches_lm_eval(tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    d = tmp_path / "task"
    files = _write_sentiment(d, "jsonl")
    path = _task_file(
        d, "senti_parity", "json", files, **{**CLS, "doc_to_text": PROMPT, "metric_list": [{"metric": "acc"}]}
    )
    a = _random_lora(str(tiny_llama), tmp_path / "a", 1, 1.0)
    b = _random_lora(str(tiny_llama), tmp_path / "b", 2, 1.0)
    pemarith.compose("0.7*a - 0.3*b", {"a": a, "b": b}).save(tmp_path / "ab")
    ll, theirs, ours, acc = _both(str(tiny_llama), path, tmp_path / "ab", monkeypatch)
    assert ll.shape == theirs.shape == (len(SENTENCES), 2)
    np.testing.assert_allclose(ll, theirs, atol=1e-4)
    assert f"{ours:.4f}" == f"{acc:.4f}"


@pytest.mark.slow
def test_smollm2_composed_adapter_on_sst2_rows_matches_lm_eval(tmp_path, monkeypatch):
    from pemarith.hf.models import resolve_model

    data = os.environ.get("PEMARITH_DATA_DIR")
    if not data or not Path(data, "glue", "SST-2").is_dir():
        pytest.skip("SST-2 not found (set PEMARITH_DATA_DIR)")
    base = resolve_model("smollm2")
    d = tmp_path / "task"
    d.mkdir()
    rows = load_split("sst2", "validation", data_dir=data)[:40]
    (d / "val.jsonl").write_text(
        "".join(json.dumps({"sentence": r["text_a"], "label": r["label"]}) + "\n" for r in rows)
    )
    path = _task_file(
        d,
        "sst2_parity",
        "json",
        {"validation": "val.jsonl"},
        **{**CLS, "doc_to_text": PROMPT, "metric_list": [{"metric": "acc"}]},
    )
    a = _random_lora(base, tmp_path / "a", 1, 0.02)
    b = _random_lora(base, tmp_path / "b", 2, 0.02)
    pemarith.compose("0.5*a + 0.5*b", {"a": a, "b": b}).save(tmp_path / "ab")
    ll, theirs, ours, acc = _both(base, path, tmp_path / "ab", monkeypatch)
    np.testing.assert_allclose(ll, theirs, atol=1e-3)  # seen here: 1.7e-5
    assert f"{ours:.4f}" == f"{acc:.4f}"
