"""The record types of a task: :class:`Task` and the parts it is built from.

The records themselves (``TASKS``) and the split rules they encode are in
:mod:`pemarith.hf.tasks`; the loaders that read them are in :mod:`pemarith.hf.data`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pemarith.errors import PemarithError

KINDS = ("classification", "regression", "text")
FORMATS = ("tsv", "jsonl", "csv", "lines", "raw")
SPLITS = ("train", "validation", "test")


def _freeze(obj: object, name: str, value: Mapping) -> None:
    object.__setattr__(obj, name, MappingProxyType(dict(value)))


@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` (fractions) of the raw split ``raw``.

    ``Part("train")`` is the whole file in file order; a proper fraction takes that slice of
    a permutation of the file by the seed (the same permutation for every part of one file).
    """

    raw: str
    start: float = 0.0
    stop: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.stop <= 1.0:
            raise ValueError(f"Part({self.raw!r}): need 0 <= start < stop <= 1")

    @property
    def whole(self) -> bool:
        return self.start == 0.0 and self.stop == 1.0

    def describe(self) -> str:
        if self.whole:
            return self.raw
        return f"{self.raw}[{self.start:.0%}:{self.stop:.0%}]"


@dataclass(frozen=True)
class LocalSource:
    """Files of a task under the data directory.

    ``files`` maps raw split names to paths relative to the data directory. Formats: ``tsv``
    (GLUE; no quoting), ``jsonl``, ``csv``, ``raw`` (one text) and ``lines`` (one text per line,
    one file per class: the path contains ``{label}``, the class index). ``columns`` names the
    columns of header-less files (CoLA's train and dev).
    """

    format: str
    files: Mapping[str, str]
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        _freeze(self, "files", self.files)


@dataclass(frozen=True)
class HubSource:
    """The same task on the Hugging Face hub (for users who are online; needs ``datasets``).

    ``splits`` maps the local raw split names to hub split names, so the same :class:`Part`
    rules apply. Hub labels are class indices already (GLUE test: -1, read as unlabelled).
    ``keep`` filters hub rows (e.g. civil_comments: toxicity >= 0.8, as the local selection).
    """

    path: str
    name: str | None
    splits: Mapping[str, str]
    text_a: str
    text_b: str | None = None
    label: str | None = "label"
    keep: Callable[[dict[str, Any]], bool] | None = None

    def __post_init__(self) -> None:
        _freeze(self, "splits", self.splits)


@dataclass(frozen=True)
class DatasetSource:
    """Rows read with Hugging Face ``datasets.load_dataset(path, name, **kwargs)`` (a task file's
    ``dataset_path``/``dataset_name``/``dataset_kwargs``; see :mod:`pemarith.hf.taskfile`).

    ``files`` maps the raw split names the :class:`Part` rules use to the dataset's split names.
    ``text``, ``text_pair`` and ``target`` are the task file's ``doc_to_text``,
    ``doc_to_text_pair`` and ``doc_to_target`` (a column name or a Jinja2 template);
    ``process_docs`` is the file's escape hatch (a function of a ``datasets.Dataset``).
    """

    path: str
    name: str | None
    kwargs: Mapping[str, Any]
    files: Mapping[str, str]
    text: str
    text_pair: str | None = None
    target: str | None = None
    process_docs: Callable[[Any], Any] | None = None
    format: str = "datasets"

    def __post_init__(self) -> None:
        _freeze(self, "kwargs", self.kwargs)
        _freeze(self, "files", self.files)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: records are singletons
class Task:
    """One task: data, splits, inputs, label, prompt, metrics.

    - ``kind``: ``classification`` (label is an int in ``range(num_labels)``), ``regression``
      (a float label) or ``text`` (no label; for language modelling and perplexity).
    - ``text_a`` / ``text_b``: the input columns (``text_b`` None for single-text tasks).
    - ``label``: the label column; ``label_values[i]`` is how class ``i`` is written in the file
      and ``label_names[i]`` its readable name.
    - ``prompt``: a ``str.format`` template over ``text_a``/``text_b`` for causal LMs;
      ``label_words[i]`` is the answer word of class ``i``, scored by log-likelihood as the
      continuation ``" " + word`` (see :meth:`choices`).
    - ``metrics``: metric names, the first is the one to select on.
    - ``splits``: ``train`` / ``validation`` / ``test`` as :class:`Part` rules.
    """

    name: str
    kind: str
    description: str
    source: LocalSource | DatasetSource
    splits: Mapping[str, Part]
    metrics: tuple[str, ...]
    text_a: str | None = None
    text_b: str | None = None
    label: str | None = None
    label_values: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    prompt: str | None = None
    label_words: tuple[str, ...] = ()
    hub: HubSource | None = None
    notes: str = ""
    #: What separates a causal LM's prompt from each choice (lm-eval's ``target_delimiter``).
    target_delimiter: str = " "
    #: For a task file: its path and the sha256 of its text (records of sweeps key on it).
    origin: str = ""
    digest: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}")
        if not self.metrics:
            raise ValueError(f"{self.name}: needs at least one metric")
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"{self.name}: unknown splits {sorted(unknown)}")
        for split, part in self.splits.items():
            if part.raw not in self.source.files:
                raise ValueError(f"{self.name}: split {split} reads raw {part.raw!r}, no file")
        if self.kind == "classification":
            if len(self.label_names) < 2 or len(self.label_values) != len(self.label_names):
                raise ValueError(f"{self.name}: label_values and label_names must match, >= 2")
            if self.label_words and len(self.label_words) != len(self.label_names):
                raise ValueError(f"{self.name}: one label word per class")
        if self.kind != "text" and self.label is None and self.source.format != "lines":
            raise ValueError(f"{self.name}: a labelled task needs a label column")
        if self.prompt is not None and "{text_a}" not in self.prompt:
            raise ValueError(f"{self.name}: prompt must use {{text_a}}")
        _freeze(self, "splits", self.splits)

    @property
    def num_labels(self) -> int:
        """Classes for classification, 1 for regression, 0 for text."""
        return {"classification": len(self.label_names), "regression": 1}.get(self.kind, 0)

    @property
    def problem_type(self) -> str | None:
        """transformers' ``problem_type`` for a sequence-classification head."""
        return {
            "classification": "single_label_classification",
            "regression": "regression",
        }.get(self.kind)

    @property
    def pair(self) -> bool:
        return self.text_b is not None

    def resplit(self) -> str:
        """The split rule in words, e.g. ``train=train validation=dev[0%:50%] ...``."""
        return " ".join(f"{s}={p.describe()}" for s, p in self.splits.items())

    def format_prompt(self, row: Mapping[str, Any]) -> str:
        """The causal-LM prompt for ``row`` (a :func:`pemarith.hf.data.load_split` row)."""
        if self.prompt is None:
            raise PemarithError(f"task {self.name!r} has no prompt (kind {self.kind})")
        return self.prompt.format(text_a=row["text_a"], text_b=row.get("text_b"))

    def choices(self) -> list[str]:
        """The continuations scored for each class, in class order: ``target_delimiter + word``
        (``" yes"``)."""
        if not self.label_words:
            raise PemarithError(f"task {self.name!r} has no label words (kind {self.kind})")
        return [self.target_delimiter + w for w in self.label_words]
