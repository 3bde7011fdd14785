"""Task files: a task in lm-evaluation-harness's YAML vocabulary, read with Hugging Face ``datasets``.

``--task`` takes a built-in name or the path of a ``.yaml``/``.yml`` file such as::

    task: imdb_sentiment
    dataset_path: json                # a datasets builder (csv, json, parquet, text), a dir or a hub id
    dataset_kwargs:
      data_files: {train: train.jsonl, validation: val.jsonl, test: test.jsonl}
    training_split: train
    validation_split: validation
    test_split: test
    output_type: multiple_choice      # or regression, loglikelihood_rolling, generate_until
    doc_to_text: "{{sentence}}"       # a column name or a Jinja2 template, as in lm-eval
    doc_to_choice: ["negative", "positive"]
    doc_to_target: label              # a column or template: a choice index or a choice
    metric_list:
      - metric: acc

Keys, as lm-eval reads them: ``task``, ``dataset_path``, ``dataset_name``, ``dataset_kwargs``,
``training_split``, ``validation_split``, ``test_split``, ``output_type``, ``doc_to_text``,
``doc_to_target``, ``doc_to_choice``, ``target_delimiter`` (default ``" "``), ``metric_list``,
``process_docs`` (``!function utils.process_docs``: a function of a ``datasets.Dataset`` in a
Python file beside the task file, imported and run, as lm-eval does; that is code the file runs),
``description``, and ``tag``/``metadata`` (ignored). pemarith's own keys: ``doc_to_text_pair``
(an encoder's second text, for sentence pairs), ``output_type: regression`` (a float target;
lm-eval has none) and ``resplit: true`` (validation and test cut from the training split, 80/10/10
by ``--split-seed``, when the data has no such splits). Any other key is refused by name.

How a model sees a row:

- an encoder classifies ``doc_to_text`` (and ``doc_to_text_pair``) into ``len(doc_to_choice)``
  classes; ``doc_to_target`` gives the class (an index, or one of the choices);
- a causal LM scores each choice by its log-likelihood as the continuation
  ``target_delimiter + choice`` of the prompt ``doc_to_text``, as lm-eval's ``multiple_choice``;
- ``loglikelihood_rolling`` is a text task (the rows' ``doc_to_text``, joined by newlines, for
  token ``perplexity``; lm-eval's ``word_perplexity`` and ``bits_per_byte`` are not computed);
  ``generate_until`` a text task scored for ``toxicity``.

A relative ``data_files`` path (and a relative ``dataset_path`` directory) is looked up beside
the task file first, then in the working directory (lm-eval 0.4 looks in the working directory
only), so one file serves both tools.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pemarith.errors import PemarithError, did_you_mean

from . import metrics as M
from .task_types import DatasetSource, Part, Task

LM_EVAL_KEYS = (
    "task",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "output_type",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "target_delimiter",
    "metric_list",
    "process_docs",
    "description",
    "tag",
    "metadata",
)
OWN_KEYS = ("doc_to_text_pair", "resplit")
OUTPUT_TYPES = {
    "multiple_choice": "classification",
    "regression": "regression",
    "loglikelihood_rolling": "text",
    "generate_until": "text",
}
_DEFAULT_METRICS = {
    "multiple_choice": ("accuracy",),
    "regression": ("spearman", "pearson"),
    "loglikelihood_rolling": ("perplexity",),
    "generate_until": ("toxicity",),
}
_RESPLIT = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}


def is_task_file(name: str) -> bool:
    """True for a ``--task`` value that names a task file (``.yaml``/``.yml``)."""
    return name.lower().endswith((".yaml", ".yml"))


class _Function(str):
    """A ``!function module.name`` tag: the dotted name of a function in a file beside the YAML."""


def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))
    return Loader


def load_task_file(path: str | os.PathLike) -> Task:
    """The :class:`Task` a task file describes (the same object while the file is unchanged)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PemarithError(f"task file {p} does not exist")
    st = p.stat()
    return _cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _cached(path: str, mtime: int, size: int) -> Task:
    del mtime, size  # part of the key: an edited file is read again
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    try:
        doc = yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader with one tag)
    except yaml.YAMLError as e:
        raise PemarithError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise PemarithError(f"{path}: a task file is a YAML mapping of lm-eval keys")
    return _task(Path(path), doc, hashlib.sha256(text.encode()).hexdigest())


def _need(doc: Mapping[str, Any], key: str, where: Path) -> Any:
    if doc.get(key) in (None, ""):
        raise PemarithError(f"{where}: missing key {key!r}")
    return doc[key]


def _task(path: Path, doc: dict[str, Any], digest: str) -> Task:
    known = (*LM_EVAL_KEYS, *OWN_KEYS)
    for key in doc:
        if key not in known:
            raise PemarithError(
                f"{path}: unknown key {key!r}{did_you_mean(str(key), known)}; keys: {', '.join(known)}"
            )
    name = str(_need(doc, "task", path))
    output_type = str(doc.get("output_type", "multiple_choice"))
    if output_type not in OUTPUT_TYPES:
        raise PemarithError(f"{path}: output_type {output_type!r}: use one of {', '.join(OUTPUT_TYPES)}")
    kind = OUTPUT_TYPES[output_type]
    choices: tuple[str, ...] = ()
    if kind == "classification":
        raw = _need(doc, "doc_to_choice", path)
        if not isinstance(raw, list) or len(raw) < 2:
            raise PemarithError(
                f"{path}: doc_to_choice must be a list of at least two choices "
                "(a template per row is not supported: the classes must be fixed)"
            )
        choices = tuple(str(c) for c in raw)
    if kind != "text":
        _need(doc, "doc_to_target", path)
    splits = _splits(path, doc)
    kwargs = dict(doc.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        kwargs["data_files"] = _resolve_files(path, kwargs["data_files"])
    dataset_path = str(_need(doc, "dataset_path", path))
    local = _beside(path, dataset_path)
    source = DatasetSource(
        path=str(local) if local is not None else dataset_path,
        name=doc.get("dataset_name"),
        kwargs=kwargs,
        files={p.raw: p.raw for p in splits.values()},
        text=str(_need(doc, "doc_to_text", path)),
        text_pair=doc.get("doc_to_text_pair"),
        target=None if doc.get("doc_to_target") is None else str(doc["doc_to_target"]),
        process_docs=_function(path, doc["process_docs"]) if doc.get("process_docs") else None,
    )
    return Task(
        name=name,
        kind=kind,
        description=str(doc.get("description") or f"task file {path.name}"),
        source=source,
        splits=splits,
        metrics=_metrics(path, doc, output_type),
        text_a="doc_to_text",
        text_b="doc_to_text_pair" if source.text_pair else None,
        label="doc_to_target" if kind != "text" else None,
        label_values=tuple(str(i) for i in range(len(choices))),
        label_names=choices,
        prompt="{text_a}" if kind == "classification" else None,
        label_words=choices,
        target_delimiter=str(doc.get("target_delimiter", " ")),
        origin=str(path),
        digest=digest,
    )


def _splits(path: Path, doc: Mapping[str, Any]) -> dict[str, Part]:
    named = {
        "train": doc.get("training_split"),
        "validation": doc.get("validation_split"),
        "test": doc.get("test_split"),
    }
    if doc.get("resplit"):
        if not named["train"]:
            raise PemarithError(f"{path}: resplit cuts validation and test from training_split: name it")
        if named["validation"] or named["test"]:
            raise PemarithError(f"{path}: resplit replaces validation_split and test_split: drop them")
        return {s: Part(str(named["train"]), a, b) for s, (a, b) in _RESPLIT.items()}
    splits = {s: Part(str(v)) for s, v in named.items() if v}
    if not splits:
        raise PemarithError(f"{path}: name at least one of training_split, validation_split, test_split")
    return splits


def _metrics(path: Path, doc: Mapping[str, Any], output_type: str) -> tuple[str, ...]:
    entries = doc.get("metric_list") or []
    if not isinstance(entries, list):
        raise PemarithError(f"{path}: metric_list is a list of {{metric: NAME}} entries")
    names = []
    for e in entries:
        name = e.get("metric") if isinstance(e, dict) else e
        key = M.ALIASES.get(str(name), str(name))
        if key not in M.METRICS and key not in M.SPECIAL:
            raise PemarithError(
                f"{path}: unknown metric {name!r}"
                f"{did_you_mean(str(name), [*M.METRICS, *M.ALIASES, *M.SPECIAL])}; "
                f"known: {', '.join([*M.METRICS, *M.SPECIAL])}"
            )
        names.append(key)
    return tuple(names) or _DEFAULT_METRICS[output_type]


def _beside(task_file: Path, name: str) -> Path | None:
    """``name`` beside the task file, else in the working directory, if it exists (else None)."""
    if os.path.isabs(name):
        return Path(name) if Path(name).exists() else None
    for root in (task_file.parent, Path.cwd()):
        if (root / name).exists():
            return (root / name).resolve()
    return None


def _resolve_files(task_file: Path, files: Any) -> Any:
    def one(f: Any) -> Any:
        if isinstance(f, str) and "://" not in f:
            found = _beside(task_file, f)
            if found is None and not any(c in f for c in "*?["):
                raise PemarithError(
                    f"{task_file}: data file {f} not found beside the task file "
                    f"({task_file.parent}) nor in the working directory"
                )
            return str(found) if found is not None else str(task_file.parent / f)
        return f

    if isinstance(files, Mapping):
        return {k: [one(x) for x in v] if isinstance(v, list) else one(v) for k, v in files.items()}
    return [one(x) for x in files] if isinstance(files, list) else one(files)


def _function(task_file: Path, ref: Any) -> Any:
    if not isinstance(ref, _Function) or "." not in ref:
        raise PemarithError(
            f"{task_file}: process_docs is '!function FILE.FUNCTION' (a Python file "
            "beside the task file), as in lm-eval"
        )
    module, _, fn = str(ref).rpartition(".")
    file = task_file.parent / (module.replace(".", "/") + ".py")
    if not file.is_file():
        raise PemarithError(f"{task_file}: process_docs names {file}, which does not exist")
    spec = importlib.util.spec_from_file_location(f"pemarith_taskfile_{module}", file)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    if not callable(getattr(mod, fn, None)):
        raise PemarithError(f"{task_file}: {file} has no function {fn}")
    return getattr(mod, fn)


# -- rows --------------------------------------------------------------------------------------


def _renderer(spec: str) -> Any:
    """``doc -> value`` for a column name (the value as stored) or a Jinja2 template (a string)."""
    import jinja2

    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(spec)

    def render(doc: Mapping[str, Any]) -> Any:
        if spec in doc:
            return doc[spec]
        return template.render(**doc)

    return render


def _label(task: Task, value: Any, where: str) -> int | float:
    if isinstance(value, float) and value != value:  # pandas reads an empty CSV cell as NaN
        value = None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PemarithError(
            f"{where}: empty target (task {task.name}); fill it in or drop the row (process_docs)"
        )
    if task.kind == "regression":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise PemarithError(f"{where}: target {value!r} is not a number") from None
    given = value
    if isinstance(value, float) and value.is_integer():  # an int column with a gap reads as float
        value = int(value)
    text = str(value).strip()
    if text in task.label_names:
        return task.label_names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(task.label_names):
        return int(text)
    raise PemarithError(
        f"{where}: target {given!r} is neither a choice ({', '.join(task.label_names)}) "
        f"nor a choice index 0..{len(task.label_names) - 1} (task {task.name})"
    )


def _dataset(source: DatasetSource, split: str, task: Task) -> Any:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, source.name, split=split, **dict(source.kwargs))
    except (ValueError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PemarithError(
            f"task {task.name} ({task.origin}): split {split!r} of {source.path}: {msg}; "
            "name the dataset's splits in training_split/validation_split/test_split, "
            "or set resplit: true"
        ) from None
    except (FileNotFoundError, datasets.exceptions.DatasetGenerationError) as e:
        cause = e.__cause__ or e  # datasets wraps the reader's error (e.g. columns that differ)
        msg = " ".join(str(cause).split()) or type(cause).__name__
        raise PemarithError(
            f"task {task.name} ({task.origin}): {source.path} could not be read: {msg}"
        ) from None
    return source.process_docs(ds) if source.process_docs is not None else ds


@functools.lru_cache(maxsize=32)
def dataset_records(task: Task, raw: str) -> tuple[tuple[str, str | None, int | float | None], ...]:
    """The ``(text_a, text_b, label)`` records of the dataset split ``raw`` of a task file's task."""
    from jinja2 import UndefinedError

    source = task.source
    assert isinstance(source, DatasetSource)
    ds = _dataset(source, raw, task)
    text, pair = _renderer(source.text), _renderer(source.text_pair) if source.text_pair else None
    target = _renderer(source.target) if source.target and task.kind != "text" else None
    out = []
    for n, doc in enumerate(ds):
        where = f"{task.origin}: split {raw}, row {n}"
        try:
            a = str(text(doc))
            b = str(pair(doc)) if pair else None
            label = _label(task, target(doc), where) if target else None
        except UndefinedError as e:
            raise PemarithError(f"{where}: {e.message} (columns: {', '.join(doc)})") from None
        out.append((a, b, label))
    return tuple(out)


def task_digests(names: Any) -> dict[str, dict[str, str]]:
    """``{"task_files": {name: sha256}}`` for the task files among ``names`` (else ``{}``): the
    key sweep and search records carry, so an edited task file is another sweep."""
    files = {str(n): load_task_file(n).digest for n in names if is_task_file(str(n))}
    return {"task_files": files} if files else {}


def describe_dir(directory: str | os.PathLike) -> list[Task]:
    """The tasks of the task files in ``directory`` (``pemarith tasks --include DIR``)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise PemarithError(f"--include {d}: not a directory")
    return [load_task_file(p) for p in sorted([*d.rglob("*.yaml"), *d.rglob("*.yml")])]
