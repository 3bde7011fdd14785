"""Task records and the loaders: real counts from shared/data, re-split rules, layout errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pemarith.errors import PemarithError
from pemarith.hf.data import load_split, load_text, resolve_data_dir
from pemarith.hf.tasks import SPLITS, TASKS, describe_tasks, get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")

# Rows per split from ../shared/data; (train, validation, test).
COUNTS = {
    "cola": (8551, 522, 521),
    "sst2": (67349, 436, 436),
    "stsb": (5749, 750, 750),
    "qnli": (3278, 1092, 1093),
    "rte": (2490, 138, 139),
    "wnli": (635, 36, 35),
    "mnli": (5889, 1963, 1963),
    "yelp": (3200, 800, 1000),
    "amazon": (1600, 400, 1000),
    "davidson": (19826, 2479, 2478),
    "civil_comments": (1339, 168, 167),
}


def _key(row: dict) -> tuple:
    return (row["text_a"], row["text_b"], row["label"])


# -- the registry ---------------------------------------------------------------------------


def test_registry_has_the_papers_tasks():
    for name in [*COUNTS, "mrpc", "qqp", "wikitext"]:
        assert get_task(name).name == name
    assert all(name == name.lower() for name in TASKS)


def test_published_spellings_and_did_you_mean():
    assert get_task("SST-2").name == "sst2"
    assert get_task("STS-B").name == "stsb"
    assert get_task("civil-comments").name == "civil_comments"
    with pytest.raises(PemarithError, match=r"did you mean 'rte'"):
        get_task("rtee")
    with pytest.raises(PemarithError, match="unknown task 'glue'"):
        get_task("glue")


def test_records_are_consistent():
    for task in TASKS.values():
        assert task.metrics
        if task.kind == "classification":
            assert task.num_labels == len(task.label_names) == len(task.label_words) >= 2
            row = {"text_a": "A", "text_b": "B"}
            assert "A" in task.format_prompt(row)
            assert task.choices() == [" " + w for w in task.label_words]
            assert task.problem_type == "single_label_classification"
    stsb = get_task("stsb")
    assert (stsb.kind, stsb.num_labels, stsb.problem_type) == ("regression", 1, "regression")
    assert get_task("cola").metrics[0] == "matthews_corr"
    assert get_task("stsb").metrics[0] == "spearman"
    assert set(get_task("mrpc").metrics) == {"f1", "accuracy"}
    assert get_task("wikitext").metrics == ("perplexity",)
    assert "toxicity" in get_task("civil_comments").metrics
    mnli, rte = get_task("mnli"), get_task("rte")
    assert mnli.label_words == ("yes", "maybe", "no") and rte.label_words == ("yes", "no")
    assert rte.format_prompt({"text_a": "s1", "text_b": "s2"}) == (
        "Does s1 imply that s2? Please answer yes or no."
    )


def test_records_are_frozen():
    task = get_task("rte")
    with pytest.raises(AttributeError):
        task.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        task.splits["train"] = task.splits["test"]  # type: ignore[index]


def test_describe_tasks_lists_every_task():
    rows = describe_tasks()
    assert [r["name"] for r in rows] == list(TASKS)
    rte = next(r for r in rows if r["name"] == "rte")
    assert rte["splits"] == "train=train validation=dev[0%:50%] test=dev[50%:100%]"
    assert set(rte) >= {"name", "kind", "splits", "metric"}


def test_tasks_and_data_import_no_torch():
    code = (
        "import sys, pemarith.hf, pemarith.hf.tasks, pemarith.hf.data, pemarith.hf.skew, "
        "pemarith.hf.models; bad = {'torch', 'transformers', 'peft'} & set(sys.modules); "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- real data ---------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_and_label_types(name):
    task = get_task(name)
    for split, n in zip(SPLITS, COUNTS[name]):
        rows = load_split(name, split, data_dir=DATA)
        assert len(rows) == n, (name, split)
        row = rows[0]
        assert set(row) == {"text_a", "text_b", "label"}
        assert isinstance(row["text_a"], str) and row["text_a"]
        assert (row["text_b"] is None) == (task.text_b is None)
        labels = {r["label"] for r in rows}
        if task.kind == "classification":
            assert labels == set(range(task.num_labels)), (name, split)
        elif task.kind == "regression":
            assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
        else:
            assert labels == {None}


@needs_data
@pytest.mark.parametrize("name", ["rte", "qnli", "mnli", "yelp", "davidson", "civil_comments"])
def test_resplits_are_disjoint_covering_and_seeded(name):
    task = get_task(name)
    a = {s: load_split(name, s, DATA, seed=1) for s in task.splits}
    b = {s: load_split(name, s, DATA, seed=1) for s in task.splits}
    assert a == b  # same seed, same split
    c = {s: load_split(name, s, DATA, seed=2) for s in task.splits}
    by_raw: dict[str, list[str]] = {}
    for split, part in task.splits.items():
        by_raw.setdefault(part.raw, []).append(split)
    for splits in by_raw.values():
        if len(splits) == 1:
            continue
        # Parts of one file: disjoint (by position; files may repeat a text) and covering.
        total = sum(len(a[s]) for s in splits)
        keys = [_key(r) for s in splits for r in a[s]]
        whole = sorted(keys)
        again = sorted(_key(r) for s in splits for r in c[s])
        assert whole == again  # another seed permutes the same rows
        assert total == len(keys)
        assert a[splits[0]] != c[splits[0]]  # ... into different parts
    if name == "rte":
        dev_texts = {_key(r) for r in a["validation"]} | {_key(r) for r in a["test"]}
        assert len(dev_texts) == 277
        assert not {_key(r) for r in a["validation"]} & {_key(r) for r in a["test"]}


@needs_data
def test_whole_file_splits_do_not_depend_on_seed():
    assert load_split("rte", "train", DATA, seed=0) == load_split("rte", "train", DATA, seed=5)
    first = load_split("rte", "train", DATA)[0]
    assert first["text_a"] == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert first["label"] == 1  # not_entailment
    # One file per class, shuffled once: a prefix of the test split has both classes.
    assert {r["label"] for r in load_split("yelp", "test", DATA)[:20]} == {0, 1}


@needs_data
def test_label_conventions():
    assert load_split("cola", "train", DATA)[0]["label"] == 1  # headerless TSV, acceptable
    assert load_split("sst2", "train", DATA)[0] == {
        "text_a": "hide new secretions from the parental units",
        "text_b": None,
        "label": 0,
    }
    stsb = load_split("stsb", "train", DATA)[0]
    assert stsb["label"] == 5.0 and stsb["text_b"] == "An air plane is taking off."


@needs_data
def test_load_text():
    wiki = load_text("wikitext", "test", DATA)
    assert isinstance(wiki, str) and "\r" not in wiki
    assert wiki.startswith(" = Robert Boulter = \n")
    assert 1_200_000 < len(wiki) < 1_400_000
    yelp = load_text("yelp", "train", DATA)
    assert len(yelp) == 3200 and all(isinstance(t, str) for t in yelp)
    assert load_text("rte", "validation", DATA)[0].count("\n") >= 1


@needs_data
def test_unknown_split():
    with pytest.raises(PemarithError, match="no split 'train'.*splits: test"):
        load_split("wikitext", "train", DATA)


# -- layout errors, in tmp dirs ---------------------------------------------------------------


def test_missing_data_dir(tmp_path):
    with pytest.raises(PemarithError, match="does not exist.*PEMARITH_DATA_DIR"):
        load_split("rte", "train", data_dir=tmp_path / "nope")


def test_env_data_dir_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMARITH_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(PemarithError, match="PEMARITH_DATA_DIR=.*is not a directory"):
        resolve_data_dir()
    monkeypatch.setenv("PEMARITH_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path


def test_missing_file(tmp_path):
    with pytest.raises(PemarithError, match=r"missing file .*glue/RTE/train.tsv") as e:
        load_split("rte", "train", data_dir=tmp_path)
    assert "\n" not in str(e.value)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_wrong_columns_name_file_and_expected(tmp_path):
    _write(tmp_path / "glue/RTE/train.tsv", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(PemarithError, match=r"train.tsv: expected columns sentence1, sentence2, label"):
        load_split("rte", "train", data_dir=tmp_path)


def test_ragged_row_and_bad_label(tmp_path):
    _write(tmp_path / "glue/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
    with pytest.raises(PemarithError, match=r"train.tsv:2: 3 fields, expected 4"):
        load_split("rte", "train", data_dir=tmp_path)
    _write(tmp_path / "glue/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n")
    with pytest.raises(PemarithError, match=r"label 'yes' is not one of entailment, not_entailment"):
        load_split("rte", "train", data_dir=tmp_path)
    _write(tmp_path / "glue/STS-B/train.tsv", "sentence1\tsentence2\tscore\na\tb\thigh\n")
    with pytest.raises(PemarithError, match="label 'high' is not a number"):
        load_split("stsb", "train", data_dir=tmp_path)


def test_a_local_directory_laid_out_the_same_way(tmp_path):
    # A GLUE task not in shared/data loads from any directory with its TSVs (fields by name).
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = "".join(f"{i % 2}\t{i}\t{i}\tleft {i}\tright {i}\n" for i in range(10))
    _write(tmp_path / "glue/MRPC/train.tsv", header + rows)
    _write(tmp_path / "glue/MRPC/dev.tsv", header + rows)
    train = load_split("mrpc", "train", data_dir=tmp_path)
    assert train[3] == {"text_a": "left 3", "text_b": "right 3", "label": 1}
    val = load_split("mrpc", "validation", data_dir=tmp_path)
    test = load_split("mrpc", "test", data_dir=tmp_path)
    assert len(val) == len(test) == 5
    assert sorted(r["text_a"] for r in val + test) == sorted(r["text_a"] for r in train)


def test_hub_source_needs_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(PemarithError, match="needs the datasets package: pip install datasets"):
        load_split("sst2", "train", source="hub")
    # Offline default: missing files are an error, not a hub download...
    monkeypatch.delenv("PEMARITH_ONLINE", raising=False)
    with pytest.raises(PemarithError, match="missing file"):
        load_split("sst2", "train", data_dir=tmp_path)
    # ... unless PEMARITH_ONLINE=1.
    monkeypatch.setenv("PEMARITH_ONLINE", "1")
    with pytest.raises(PemarithError, match="datasets package"):
        load_split("sst2", "train", data_dir=tmp_path)
    with pytest.raises(PemarithError, match="source must be"):
        load_split("sst2", "train", data_dir=tmp_path, source="web")


def test_hub_path_with_a_fake_datasets(monkeypatch):
    # The online path, offline: a stand-in `datasets` module records what is asked for.
    import types

    asked = []
    hub_rows = {
        ("nyu-mll/glue", "rte", "train"): [
            {"sentence1": f"p{i}", "sentence2": f"h{i}", "label": i % 2, "idx": i} for i in range(6)
        ],
        ("nyu-mll/glue", "rte", "validation"): [
            {"sentence1": f"p{i}", "sentence2": f"h{i}", "label": -1, "idx": i} for i in range(4)
        ],
        ("google/civil_comments", None, "test"): [
            {"text": "mild", "toxicity": 0.1},
            {"text": "toxic", "toxicity": 0.9},
        ],
        ("Salesforce/wikitext", "wikitext-103-raw-v1", "test"): [
            {"text": " = A = \n"},
            {"text": ""},
            {"text": " Body .\n"},
        ],
    }

    def load_dataset(path, name=None, split=None):
        asked.append((path, name, split))
        return hub_rows[(path, name, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    train = load_split("rte", "train", source="hub")
    assert train[1] == {"text_a": "p1", "text_b": "h1", "label": 1}
    val = load_split("rte", "validation", source="hub")
    assert len(val) == 2 and val[0]["label"] is None  # -1: unlabelled
    assert load_split("civil_comments", "train", source="hub", seed=0) in (
        [{"text_a": "toxic", "text_b": None, "label": None}],
        [],
    )
    assert load_text("wikitext", "test", source="hub") == " = A = \n Body .\n"
    assert ("nyu-mll/glue", "rte", "validation") in asked
    with pytest.raises(PemarithError, match="no hub source"):
        load_split("yelp", "train", source="hub")


def test_glue_tsv_with_a_byte_order_mark(tmp_path):
    # MRPC's train.tsv and dev.tsv, as the GLUE download script writes them, begin with a BOM.
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = "".join(f"{i % 2}\t{i}\t{i}\tleft {i}\tright {i}\n" for i in range(6))
    _write(tmp_path / "glue/MRPC/train.tsv", header + rows)
    assert (tmp_path / "glue/MRPC/train.tsv").read_bytes()[:3] == b"\xef\xbb\xbf"
    train = load_split("mrpc", "train", data_dir=tmp_path)
    assert [r["label"] for r in train] == [0, 1, 0, 1, 0, 1]
    assert train[0]["text_a"] == "left 0"


def test_empty_label_names_file_and_row(tmp_path):
    _write(
        tmp_path / "glue/RTE/train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\t\n",
    )
    with pytest.raises(PemarithError, match=r"train.tsv:3: empty label \(task rte\)") as e:
        load_split("rte", "train", data_dir=tmp_path)
    assert "\n" not in str(e.value)
    _write(tmp_path / "glue/STS-B/train.tsv", "sentence1\tsentence2\tscore\na\tb\t \n")
    with pytest.raises(PemarithError, match=r"train.tsv:2: empty label \(task stsb\)"):
        load_split("stsb", "train", data_dir=tmp_path)


def test_data_dir_is_not_found_relative_to_the_package(tmp_path, monkeypatch):
    # An installed package must behave as a checkout: only the flag, the variable and the
    # working directory count, never the location of the source files.
    from pemarith.hf.data import candidate_data_dirs

    monkeypatch.delenv("PEMARITH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert candidate_data_dirs() == [tmp_path.parent / "shared" / "data", tmp_path / "data"]
    with pytest.raises(PemarithError, match="no data directory found"):
        resolve_data_dir()
