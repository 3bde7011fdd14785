"""Task files (issue 18, item 1): lm-eval's YAML vocabulary, read with Hugging Face datasets from CSV,
JSON Lines and Parquet written in the test; an encoder classification task, a regression task, a
causal-LM choice task and a perplexity task, trained, evaluated and swept; metrics equal a hand
computation on the same rows; bad files are one-line errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("datasets")

from test_train_eval import NEG, POS, tiny_bert, tiny_llama  # noqa: E402,F401

from pemarith.errors import PemarithError  # noqa: E402
from pemarith.hf.data import load_split  # noqa: E402
from pemarith.hf.tasks import get_task  # noqa: E402

SENTENCES = [(t, "positive") for t in POS] + [(t, "negative") for t in NEG]


def _write_sentiment(d: Path, fmt: str) -> dict[str, str]:
    """The same 12 rows as train and as validation, in ``fmt``; returns data_files."""
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"sentence": s, "label": lab, "score": 4.0 if lab == "positive" else 1.0} for s, lab in SENTENCES]
    files = {}
    for split in ("train", "validation"):
        name = f"{split}.{fmt}"
        if fmt == "csv":
            with open(d / name, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["sentence", "label", "score"])
                w.writeheader()
                w.writerows(rows)
        elif fmt == "jsonl":
            (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            import datasets

            datasets.Dataset.from_list(rows).to_parquet(str(d / name))
        files[split] = name
    return files


def _task_file(d: Path, name: str, builder: str, files: dict[str, str], **keys) -> Path:
    import yaml

    doc = {
        "task": name,
        "dataset_path": builder,
        "dataset_kwargs": {"data_files": files},
        **{
            key: split
            for key, split in (("training_split", "train"), ("validation_split", "validation"))
            if split in files
        },
        **keys,
    }
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


CLS = dict(
    output_type="multiple_choice",
    doc_to_text="{{sentence}}",
    doc_to_choice=["negative", "positive"],
    doc_to_target="label",
    metric_list=[{"metric": "acc"}, {"metric": "f1"}],
)


@pytest.mark.parametrize("fmt,builder", [("csv", "csv"), ("jsonl", "json"), ("parquet", "parquet")])
def test_rows_from_csv_jsonl_parquet(tmp_path, fmt, builder):
    files = _write_sentiment(tmp_path / "data", fmt)
    path = _task_file(tmp_path, f"senti_{fmt}", builder, {k: f"data/{v}" for k, v in files.items()}, **CLS)
    task = get_task(str(path))
    assert task is get_task(str(path))  # one object while the file is unchanged
    assert task.kind == "classification" and task.label_names == ("negative", "positive")
    assert task.metrics == ("accuracy", "f1")
    rows = load_split(task, "validation")
    assert [(r["text_a"], r["label"]) for r in rows] == [(s, int(lab == "positive")) for s, lab in SENTENCES]


def test_data_files_are_found_beside_the_task_file_then_in_the_working_directory(tmp_path, monkeypatch):
    files = _write_sentiment(tmp_path / "cwd", "jsonl")
    (tmp_path / "tasks").mkdir()
    path = _task_file(tmp_path / "tasks", "senti", "json", files, **CLS)
    monkeypatch.chdir(tmp_path / "cwd")
    assert len(load_split(get_task(str(path)), "train")) == 12  # from the working directory
    _write_sentiment(tmp_path / "tasks", "jsonl")
    (tmp_path / "tasks" / "train.jsonl").write_text(
        json.dumps({"sentence": "x", "label": "positive", "score": 4.0}) + "\n"
    )
    path.write_text(path.read_text() + "\n")  # edited: read again
    assert [r["text_a"] for r in load_split(get_task(str(path)), "train")] == ["x"]  # beside wins


def test_templates_targets_as_choices_and_indices_and_a_resplit(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": i % 3} for i in range(30)]
    (d / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = _task_file(
        tmp_path,
        "nli",
        "json",
        {"train": "data/all.jsonl"},
        doc_to_text="Premise: {{premise}}",
        doc_to_text_pair="{{hypothesis | upper}}",
        doc_to_choice=["yes", "maybe", "no"],
        doc_to_target="{{gold}}",
        resplit=True,
    )
    path.write_text(path.read_text().replace("validation_split: validation\n", ""))
    task = get_task(str(path))
    assert set(task.splits) == {"train", "validation", "test"} and task.pair
    got = {r["text_a"]: (r["text_b"], r["label"]) for s in task.splits for r in load_split(task, s, seed=3)}
    assert got == {f"Premise: p{i}": (f"H{i}", i % 3) for i in range(30)}  # disjoint parts, all rows
    assert len(load_split(task, "validation", seed=3)) == 3
    assert load_split(task, "validation", seed=3) != load_split(task, "validation", seed=4)


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"doc_to_txt": "x"}, "unknown key 'doc_to_txt'.*did you mean 'doc_to_text'"),
        ({"output_type": "loglikelihood"}, "output_type 'loglikelihood': use one of"),
        ({"metric_list": [{"metric": "bleu"}]}, "unknown metric 'bleu'"),
        ({"doc_to_choice": "{{choices}}"}, "doc_to_choice must be a list"),
        (
            {"dataset_kwargs": {"data_files": {"train": "nowhere.csv"}}},
            "data file nowhere.csv not found beside",
        ),
    ],
)
def test_bad_task_files_are_one_line_errors(tmp_path, edit, message):
    files = _write_sentiment(tmp_path, "csv")
    path = _task_file(tmp_path, "bad", "csv", files, **{**CLS, **edit})
    with pytest.raises(PemarithError, match=message) as e:
        get_task(str(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "edit,split,message",
    [
        (
            {"doc_to_text": "{{sentense}}"},
            "train",
            r"'sentense' is undefined \(columns: sentence, label, score\)",
        ),
        ({"test_split": "test"}, "test", "split 'test' of csv.*name the dataset's splits"),
        ({"doc_to_target": "score"}, "train", "target 4.0 is neither a choice"),
    ],
)
def test_missing_columns_and_splits_are_one_line_errors(tmp_path, edit, split, message):
    files = _write_sentiment(tmp_path, "csv")
    task = get_task(str(_task_file(tmp_path, "bad", "csv", files, **{**CLS, **edit})))
    with pytest.raises(PemarithError, match=message) as e:
        load_split(task, split)
    assert "\n" not in str(e.value)
    with pytest.raises(PemarithError, match="has no split 'test'"):
        load_split(get_task(str(_task_file(tmp_path, "ok", "csv", files, **CLS))), "test")


def test_process_docs_escape_hatch(tmp_path):
    files = _write_sentiment(tmp_path, "csv")
    (tmp_path / "utils.py").write_text(
        "def keep_short(ds):\n    return ds.filter(lambda d: len(d['sentence']) < 20)\n"
    )
    path = _task_file(tmp_path, "short", "csv", files, **CLS)
    path.write_text(path.read_text() + "process_docs: !function utils.keep_short\n")
    rows = load_split(get_task(str(path)), "train")
    assert [r["text_a"] for r in rows] == [s for s, _ in SENTENCES if len(s) < 20]


def test_encoder_classification_trained_and_evaluated_equals_a_hand_computation(tiny_bert, tmp_path):  # noqa: F811
    from pemarith.hf.evaluate import evaluate, load_for_eval
    from pemarith.hf.train import TrainConfig, train

    files = _write_sentiment(tmp_path, "parquet")
    path = str(_task_file(tmp_path, "senti", "parquet", files, **CLS))
    out = train(
        TrainConfig(
            model=str(tiny_bert),
            task=path,
            output_dir=tmp_path / "m",
            steps=20,
            lr=5e-3,
            batch_size=4,
            max_length=32,
            progress=False,
        )
    )
    result = evaluate(str(tiny_bert), path, adapter=out, progress=False)
    model, tok = load_for_eval(str(tiny_bert), get_task(path), out)
    batch = tok([s for s, _ in SENTENCES], return_tensors="pt", padding=True)
    with torch.no_grad():
        pred = model(**batch).logits.argmax(-1).tolist()
    gold = [int(lab == "positive") for _, lab in SENTENCES]
    tp = sum(p == g == 1 for p, g in zip(pred, gold))
    f1 = 2 * tp / (sum(pred) + sum(gold)) if sum(pred) + sum(gold) else 0.0
    assert result["n"] == 12
    assert result["metrics"]["accuracy"] == pytest.approx(sum(p == g for p, g in zip(pred, gold)) / 12)
    assert result["metrics"]["f1"] == pytest.approx(f1)


def test_regression_task_file(tiny_bert, tmp_path):  # noqa: F811
    from scipy.stats import spearmanr

    from pemarith.hf.evaluate import evaluate, load_for_eval
    from pemarith.hf.train import TrainConfig, train

    files = _write_sentiment(tmp_path, "csv")
    path = str(
        _task_file(
            tmp_path,
            "score",
            "csv",
            files,
            output_type="regression",
            doc_to_text="sentence",
            doc_to_target="score",
            metric_list=[{"metric": "spearman"}],
        )
    )
    task = get_task(path)
    assert task.kind == "regression" and task.num_labels == 1
    out = train(
        TrainConfig(
            model=str(tiny_bert),
            task=path,
            output_dir=tmp_path / "m",
            steps=8,
            lr=5e-3,
            batch_size=4,
            max_length=32,
            progress=False,
        )
    )
    result = evaluate(str(tiny_bert), path, adapter=out, progress=False)
    model, tok = load_for_eval(str(tiny_bert), task, out)
    with torch.no_grad():
        pred = model(**tok([s for s, _ in SENTENCES], return_tensors="pt", padding=True)).logits[:, 0]
    gold = [4.0 if lab == "positive" else 1.0 for _, lab in SENTENCES]
    assert result["metrics"]["spearman"] == pytest.approx(spearmanr(pred.numpy(), gold).statistic, abs=1e-6)


def _loglik(model, tok, prompt: str, continuation: str) -> float:
    ctx = tok(prompt).input_ids
    cont = tok(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0]
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def test_causal_choice_task_scores_choices_by_loglikelihood_as_lm_eval(tiny_llama, tmp_path):  # noqa: F811
    from pemarith.hf.evaluate import evaluate, load_for_eval

    files = _write_sentiment(tmp_path, "jsonl")
    path = str(
        _task_file(
            tmp_path,
            "senti_lm",
            "json",
            files,
            **{
                **CLS,
                "doc_to_text": 'Review: "{{sentence}}"\nSentiment:',
                "target_delimiter": " ",
                "metric_list": [{"metric": "acc"}],
            },
        )
    )
    result = evaluate(str(tiny_llama), path, progress=False)
    model, tok = load_for_eval(str(tiny_llama), get_task(path), None)
    hits = 0
    for s, lab in SENTENCES:
        prompt = f'Review: "{s}"\nSentiment:'
        scores = [_loglik(model, tok, prompt, " " + c) for c in ("negative", "positive")]
        hits += int(scores.index(max(scores)) == int(lab == "positive"))
    assert result["metrics"]["accuracy"] == pytest.approx(hits / 12)


def test_perplexity_task_file_and_a_sweep_keyed_on_the_file(tiny_llama, tmp_path):  # noqa: F811
    from pemarith.cli import main
    from pemarith.hf.evaluate import evaluate

    (tmp_path / "corpus.txt").write_text("\n".join(s for s, _ in SENTENCES) + "\n")
    path = _task_file(
        tmp_path,
        "corpus",
        "text",
        {"train": "corpus.txt", "validation": "corpus.txt"},
        output_type="loglikelihood_rolling",
        doc_to_text="text",
    )
    task = get_task(str(path))
    assert task.kind == "text" and task.metrics == ("perplexity",)
    result = evaluate(str(tiny_llama), str(path), progress=False)
    ppl = result["metrics"]["perplexity"]
    assert math.isfinite(ppl) and ppl > 1
    # trained on the file's text, then swept over it: records carry the file's digest
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_llama),
                "--task",
                str(path),
                "--steps",
                "3",
                "--quiet",
                "-o",
                str(tmp_path / "lm"),
            ]
        )
        == 0
    )
    sweep = [
        "sweep",
        "l*lm",
        "-m",
        f"lm={tmp_path / 'lm'}",
        "--model",
        str(tiny_llama),
        "--task",
        str(path),
        "--grid",
        "0:1:1",
        "--test-split",
        "none",
        "--no-refs",
        "--no-plot",
        "-o",
        str(tmp_path / "sw"),
    ]
    assert main(sweep) == 0
    first = json.loads((tmp_path / "sw" / "records.jsonl").read_text().splitlines()[0])
    assert first["fingerprint"]["task_files"] == {str(path): task.digest}
    path.write_text(path.read_text() + "description: edited\n")
    with pytest.raises(SystemExit):  # an edited task file is another sweep: refused, not mixed
        main(sweep)


def test_tasks_include_lists_task_files(tmp_path, capsys):
    from pemarith.cli import main

    files = _write_sentiment(tmp_path, "csv")
    _task_file(tmp_path, "mine", "csv", files, **CLS)
    assert main(["tasks", "--include", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mine = [r for r in rows if r["name"] == "mine"]
    assert {r["name"] for r in rows} >= {"sst2", "mine"} and mine[0]["file"].endswith("mine.yaml")
    assert mine[0]["labels"] == "negative/positive" and mine[0]["metric"] == "accuracy,f1"


def test_published_csvs_quoted_newlines_and_empty_labels(tmp_path):
    """Item 3: a CSV as exported (quoted fields with newlines, a BOM) reads whole; a row with an
    empty label is an error naming the file and row, in the built-in reader and in task files."""
    d = tmp_path / "toxic"
    d.mkdir()
    body = "tweet,class\n" + '"first line\nsecond line, with a comma",1\n"plain",2\n"third",0\n' * 4
    (d / "davidson_labeled_data.csv").write_text("\ufeff" + body, encoding="utf-8")
    rows = [r for s in ("train", "validation", "test") for r in load_split("davidson", s, data_dir=tmp_path)]
    assert len(rows) == 12 and sum("second line, with a comma" in r["text_a"] for r in rows) == 4
    (d / "davidson_labeled_data.csv").write_text(body + '"no label",\n')
    with pytest.raises(PemarithError, match=r"davidson_labeled_data.csv:18: empty label"):
        load_split("davidson", "train", data_dir=tmp_path)
    task = get_task(
        str(
            _task_file(
                tmp_path,
                "dav",
                "csv",
                {"train": "toxic/davidson_labeled_data.csv"},
                doc_to_text="tweet",
                doc_to_choice=["hate", "offensive", "neither"],
                doc_to_target="class",
            )
        )
    )
    with pytest.raises(PemarithError, match=r"split train, row 12: empty target"):
        load_split(task, "train")
