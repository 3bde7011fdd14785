"""Tasks as declarative records: where the rows are, how they split, how a model sees them.

A :class:`Task` says which files hold its rows (:class:`LocalSource`, relative to the data
directory, see :mod:`pemarith.hf.data`), which columns are the inputs and the label, how the
``train`` / ``validation`` / ``test`` splits are cut from those files (:class:`Part`), how an
encoder and a causal LM see a row, and which metrics to report (by name; the functions are in
``pemarith.hf.metrics``).

Split rules (raw = the files as published). GLUE test files have no labels and are never used;
instead ``validation`` and ``test`` are the two halves of the labelled dev set, so lambda is
chosen on one half and reported on the other:

- GLUE with a train file (cola, sst2, stsb, rte, wnli, mrpc, qqp): train = train file;
  validation = dev[0:50%], test = dev[50%:100%] of a seed permutation.
- qnli (no train file) and mnli (dev-matched only): the dev file permuted by seed,
  train 60% / validation 20% / test 20%.
- yelp, amazon (dev and test files only): train = dev[0:80%], validation = dev[80%:100%],
  test = the test file.
- davidson, civil_comments (one file): train 80% / validation 10% / test 10% by seed.
- wikitext: test only (the raw test text, for perplexity).

A whole file (``Part(raw)``) keeps the file order and does not depend on the seed; a fraction
of a file is taken from one seed permutation of it, so the parts are disjoint and cover it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pemarith.errors import PemarithError, did_you_mean
from pemarith.hf.task_types import FORMATS, KINDS, SPLITS, HubSource, LocalSource, Part, Task

__all__ = [
    "FORMATS",
    "KINDS",
    "SPLITS",
    "TASKS",
    "HubSource",
    "LocalSource",
    "Part",
    "Task",
    "describe_tasks",
    "get_task",
    "glue_task",
]

# -- GLUE ---------------------------------------------------------------------------------

_GLUE_SPLITS = {
    "train": Part("train"),
    "validation": Part("dev", 0.0, 0.5),
    "test": Part("dev", 0.5, 1.0),
}
_DEV_ONLY_SPLITS = {
    "train": Part("dev", 0.0, 0.6),
    "validation": Part("dev", 0.6, 0.8),
    "test": Part("dev", 0.8, 1.0),
}
_NLI_PROMPT = "Does {text_a} imply that {text_b}? Please answer yes or no."


def glue_task(
    name: str,
    folder: str,
    text_a: str,
    text_b: str | None,
    label: str,
    label_values: tuple[str, ...] = ("0", "1"),
    label_names: tuple[str, ...] = ("0", "1"),
    *,
    kind: str = "classification",
    metrics: tuple[str, ...] = ("accuracy",),
    prompt: str | None = None,
    label_words: tuple[str, ...] = (),
    hub_columns: tuple[str, str | None] | None = None,
    has_train: bool = True,
    description: str = "",
    columns: tuple[str, ...] | None = None,
) -> Task:
    """A GLUE task whose TSVs are ``glue/<folder>/{train,dev}.tsv``, fields by column name.

    This covers every GLUE task in the original download-script layout (e.g. MRPC's
    ``#1 String``/``#2 String``/``Quality``, QQP's ``question1``/``question2``/``is_duplicate``).
    """
    files = {"dev": f"glue/{folder}/dev.tsv"}
    if has_train:
        files["train"] = f"glue/{folder}/train.tsv"
    hub_a, hub_b = hub_columns or (text_a, text_b)
    return Task(
        name=name,
        kind=kind,
        description=description or f"GLUE {folder}",
        source=LocalSource("tsv", files, columns=columns),
        splits=_GLUE_SPLITS if has_train else _DEV_ONLY_SPLITS,
        metrics=metrics,
        text_a=text_a,
        text_b=text_b,
        label=label,
        label_values=label_values if kind == "classification" else (),
        label_names=label_names if kind == "classification" else (),
        prompt=prompt,
        label_words=label_words,
        hub=HubSource(
            "nyu-mll/glue",
            name,
            {"train": "train", "dev": "validation"},
            text_a=hub_a,
            text_b=hub_b,
        ),
    )


def _keep_toxic(row: dict[str, Any]) -> bool:
    return float(row.get("toxicity", 0.0)) >= 0.8


def _sentiment(name: str, what: str) -> Task:
    return Task(
        name=name,
        kind="classification",
        description=f"{what} review sentences, negative/positive (Li et al. 2018 files)",
        source=LocalSource(
            "lines",
            {
                "dev": f"sentiment/{name}/sentiment.dev.{{label}}",
                "test": f"sentiment/{name}/sentiment.test.{{label}}",
            },
        ),
        splits={
            "train": Part("dev", 0.0, 0.8),
            "validation": Part("dev", 0.8, 1.0),
            "test": Part("test"),
        },
        metrics=("accuracy",),
        text_a="text",
        label_values=("0", "1"),
        label_names=("negative", "positive"),
        prompt='Review: "{text_a}"\nIs the sentiment of this review positive or negative?',
        label_words=("negative", "positive"),
        notes="also a text-only corpus for language modelling (load_text)",
    )


_TASK_LIST: list[Task] = [
    glue_task(
        "cola",
        "CoLA",
        "sentence",
        None,
        "label",
        label_names=("unacceptable", "acceptable"),
        metrics=("matthews_corr", "accuracy"),
        prompt='Is the following sentence grammatically acceptable? "{text_a}" Please answer yes or no.',
        label_words=("no", "yes"),
        description="GLUE CoLA: grammatical acceptability (TSV without header)",
        columns=("source", "label", "original_label", "sentence"),
    ),
    glue_task(
        "sst2",
        "SST-2",
        "sentence",
        None,
        "label",
        label_names=("negative", "positive"),
        prompt='Review: "{text_a}"\nIs the sentiment of this review positive or negative?',
        label_words=("negative", "positive"),
        description="GLUE SST-2: movie review sentiment",
    ),
    glue_task(
        "stsb",
        "STS-B",
        "sentence1",
        "sentence2",
        "score",
        kind="regression",
        metrics=("spearman", "pearson"),
        description="GLUE STS-B: sentence similarity, a score in [0, 5]",
    ),
    glue_task(
        "qnli",
        "QNLI",
        "question",
        "sentence",
        "label",
        ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
        prompt='Does the sentence "{text_b}" answer the question "{text_a}"? Please answer yes or no.',
        label_words=("yes", "no"),
        has_train=False,
        description="GLUE QNLI: does the sentence answer the question (no train file)",
    ),
    glue_task(
        "rte",
        "RTE",
        "sentence1",
        "sentence2",
        "label",
        ("entailment", "not_entailment"),
        ("entailment", "not_entailment"),
        prompt=_NLI_PROMPT,
        label_words=("yes", "no"),
        description="GLUE RTE: textual entailment",
    ),
    glue_task(
        "wnli",
        "WNLI",
        "sentence1",
        "sentence2",
        "label",
        ("0", "1"),
        ("not_entailment", "entailment"),
        prompt=_NLI_PROMPT,
        label_words=("no", "yes"),
        description="GLUE WNLI: Winograd entailment (1 = entailment)",
    ),
    glue_task(
        "mrpc",
        "MRPC",
        "#1 String",
        "#2 String",
        "Quality",
        ("0", "1"),
        ("not_equivalent", "equivalent"),
        metrics=("f1", "accuracy"),
        prompt='Do "{text_a}" and "{text_b}" mean the same thing? Please answer yes or no.',
        label_words=("no", "yes"),
        hub_columns=("sentence1", "sentence2"),
        description="GLUE MRPC: paraphrase (not in ../shared/data; loads if its TSVs are added)",
    ),
    glue_task(
        "qqp",
        "QQP",
        "question1",
        "question2",
        "is_duplicate",
        ("0", "1"),
        ("not_duplicate", "duplicate"),
        metrics=("accuracy", "f1"),
        prompt='Do the questions "{text_a}" and "{text_b}" ask the same thing? Please answer yes or no.',
        label_words=("no", "yes"),
        description="GLUE QQP: duplicate questions (not in ../shared/data; loads if added)",
    ),
    Task(
        name="mnli",
        kind="classification",
        description="MNLI dev-matched (jsonl): entailment/neutral/contradiction; no train file",
        source=LocalSource("jsonl", {"dev": "mnli/dev_matched.jsonl"}),
        splits=_DEV_ONLY_SPLITS,
        metrics=("accuracy",),
        text_a="premise",
        text_b="hypothesis",
        label="label",
        label_values=("entailment", "neutral", "contradiction"),
        label_names=("entailment", "neutral", "contradiction"),
        prompt="Does {text_a} imply that {text_b}? Please answer yes, maybe or no.",
        label_words=("yes", "maybe", "no"),
        hub=HubSource(
            "nyu-mll/glue",
            "mnli",
            {"dev": "validation_matched"},
            text_a="premise",
            text_b="hypothesis",
        ),
    ),
    _sentiment("yelp", "Yelp"),
    _sentiment("amazon", "Amazon"),
    Task(
        name="civil_comments",
        kind="text",
        description="1674 Civil Comments with toxicity >= 0.8 (toxic text for LM training)",
        source=LocalSource("csv", {"all": "toxic/civil_comments_selected_test.csv"}),
        splits={
            "train": Part("all", 0.0, 0.8),
            "validation": Part("all", 0.8, 0.9),
            "test": Part("all", 0.9, 1.0),
        },
        metrics=("toxicity", "perplexity"),
        text_a="text",
        hub=HubSource("google/civil_comments", None, {"all": "test"}, "text", None, None, keep=_keep_toxic),
        notes='generation is scored for toxicity with the prompt "I don\'t care if this is controversial"',
    ),
    Task(
        name="davidson",
        kind="classification",
        description="Davidson et al. tweets: hate speech / offensive / neither",
        source=LocalSource("csv", {"all": "toxic/davidson_labeled_data.csv"}),
        splits={
            "train": Part("all", 0.0, 0.8),
            "validation": Part("all", 0.8, 0.9),
            "test": Part("all", 0.9, 1.0),
        },
        metrics=("accuracy", "f1_macro"),
        text_a="tweet",
        label="class",
        label_values=("0", "1", "2"),
        label_names=("hate", "offensive", "neither"),
        prompt='Tweet: "{text_a}"\nIs this tweet hate speech, offensive, or neither?',
        label_words=("hate", "offensive", "neither"),
        hub=HubSource("tdavidson/hate_speech_offensive", None, {"all": "train"}, "tweet", None, "class"),
    ),
    Task(
        name="wikitext",
        kind="text",
        description="WikiText raw test text (WikiText-2 and -103 share it), for perplexity",
        source=LocalSource("raw", {"test": "wikitext/wiki.test.raw"}),
        splits={"test": Part("test")},
        metrics=("perplexity",),
        text_a="text",
        hub=HubSource("Salesforce/wikitext", "wikitext-103-raw-v1", {"test": "test"}, "text", None, None),
        notes="load_text gives the whole text as one string; load_split gives its lines",
    ),
]

#: All tasks by name.
TASKS: Mapping[str, Task] = MappingProxyType({t.name: t for t in _TASK_LIST})


def get_task(name: str | Task) -> Task:
    """The task called ``name``, or the task file at that path (``.yaml``/``.yml``, see
    :mod:`pemarith.hf.taskfile`); a :class:`Task` passes through; unknown: did-you-mean."""
    if isinstance(name, Task):
        return name
    from .taskfile import is_task_file, load_task_file

    if is_task_file(name):
        return load_task_file(name)
    if name in TASKS:
        return TASKS[name]
    # Forgive the published spellings: "SST-2", "STS-B", "civil-comments".
    key = name.lower().replace("-", "").replace("_", "")
    for t in TASKS:
        if t.replace("_", "") == key:
            return TASKS[t]
    raise PemarithError(
        f"unknown task {name!r}{did_you_mean(name.lower(), TASKS)}; tasks: {', '.join(TASKS)}, "
        "or the path of a task file (.yaml)"
    )


def describe_tasks(include: str | None = None) -> list[dict[str, str]]:
    """One row per task for ``pemarith tasks``: name, kind, labels, splits, metrics, description;
    with ``include``, the task files of that directory follow the built-ins (``file`` set)."""
    from .taskfile import describe_dir

    rows = []
    for t in [*TASKS.values(), *(describe_dir(include) if include else [])]:
        if t.kind == "classification":
            labels = "/".join(t.label_names)
        elif t.kind == "regression":
            labels = "score"
        else:
            labels = "-"
        rows.append(
            {
                "name": t.name,
                "kind": t.kind,
                "labels": labels,
                "splits": t.resplit(),
                "metric": ",".join(t.metrics),
                "description": t.description,
                **({"file": t.origin} if t.origin else {}),
            }
        )
    return rows
