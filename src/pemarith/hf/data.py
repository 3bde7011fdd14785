"""Read a task's rows from a local data directory (or the hub) and cut its splits.

Rows are dicts ``{"text_a": str, "text_b": str | None, "label": int | float | None}``: an int
class index for classification, a float for regression (STS-B), None for text tasks.

The data directory is, in order: the ``data_dir`` argument (``--data-dir``);
``$PEMARITH_DATA_DIR``; ``../shared/data`` or ``./data`` relative to the working directory. It is
never looked up relative to the installed package, so an installed (non-editable) pemarith finds
the same directory as a source checkout. It is laid
out like the project's ``shared/data`` (``glue/<TASK>/{train,dev}.tsv``, ``mnli/``,
``sentiment/``, ``toxic/``, ``wikitext/``); see each task's ``source`` in
:mod:`pemarith.hf.tasks`. With ``source="hub"``, or when the local files are missing and
``PEMARITH_ONLINE=1``, the rows come from the Hugging Face hub instead (needs ``datasets``,
imported only then).

Split rules are the tasks' :class:`~pemarith.hf.tasks.Part` records: a whole file keeps its
order; fractions of a file are slices of ``random.Random(seed).shuffle`` of its row indices.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pemarith.errors import PemarithError
from pemarith.hf.task_types import DatasetSource
from pemarith.hf.tasks import Part, Task, get_task

Record = tuple[str, "str | None", "int | float | None"]

_SOURCES = (None, "auto", "local", "hub")
_LAYOUT = "a directory laid out like shared/data (glue/, mnli/, sentiment/, toxic/, wikitext/)"
_HOW = f"pass data_dir (--data-dir) or set PEMARITH_DATA_DIR to {_LAYOUT}"


def candidate_data_dirs() -> list[Path]:
    """Where a data directory is looked for when none is given, in order."""
    dirs = []
    env = os.environ.get("PEMARITH_DATA_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs += [Path.cwd().parent / "shared" / "data", Path.cwd() / "data"]
    return dirs


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory to read (see the module docstring); a one-line error if none."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise PemarithError(f"data directory {path} does not exist; {_HOW}")
        return path
    env = os.environ.get("PEMARITH_DATA_DIR")
    if env and not Path(env).expanduser().is_dir():
        raise PemarithError(f"PEMARITH_DATA_DIR={env} is not a directory; {_HOW}")
    for path in candidate_data_dirs():
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidate_data_dirs())
    raise PemarithError(f"no data directory found (tried {tried}); {_HOW}")


# -- reading local files --------------------------------------------------------------------


def _columns_error(path: Path, task: Task, found: list[str]) -> PemarithError:
    want = [c for c in (task.text_a, task.text_b, task.label) if c is not None]
    return PemarithError(
        f"{path}: expected columns {', '.join(want)} (task {task.name}); found "
        f"{', '.join(found) if found else 'none'}"
    )


def _iter_table(path: Path, task: Task) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row dict)`` of a tsv/csv/jsonl file."""
    fmt = task.source.format
    # utf-8-sig: MRPC's train.tsv and dev.tsv, as the GLUE download script writes them, start with
    # a UTF-8 byte-order mark, which plain utf-8 would glue to the first column's name.
    if fmt == "jsonl":
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PemarithError(f"{path}:{n}: not a JSON line ({e.msg})") from None
                if not isinstance(row, dict):
                    raise PemarithError(f"{path}:{n}: expected a JSON object per line")
                yield n, row
        return
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if fmt == "tsv":  # GLUE TSVs are not quoted: quotes are part of the text
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(fh)
        header = list(task.source.columns) if task.source.columns else next(reader, [])
        width = len(header)
        for row in reader:
            n = reader.line_num
            if not row:
                continue
            if len(row) != width:
                raise PemarithError(f"{path}:{n}: {len(row)} fields, expected {width} ({', '.join(header)})")
            yield n, dict(zip(header, row))


def _label(task: Task, value: Any, where: str) -> int | float | None:
    if task.kind == "text":
        return None
    if task.kind == "regression":
        if not str(value).strip():
            raise PemarithError(f"{where}: empty label (task {task.name}); fill it in or remove the row")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise PemarithError(f"{where}: label {value!r} is not a number") from None
    raw = str(value).strip()
    if not raw:
        raise PemarithError(f"{where}: empty label (task {task.name}); fill it in or remove the row")
    if raw not in task.label_values:
        raise PemarithError(
            f"{where}: label {raw!r} is not one of {', '.join(task.label_values)} (task {task.name})"
        )
    return task.label_values.index(raw)


def _read_table(path: Path, task: Task) -> list[Record]:
    out: list[Record] = []
    needed = [c for c in (task.text_a, task.text_b, task.label) if c is not None]
    for n, row in _iter_table(path, task):
        if any(c not in row for c in needed):
            raise _columns_error(path, task, list(row))
        text_b = str(row[task.text_b]).strip() if task.text_b else None
        label = _label(task, row[task.label], f"{path}:{n}") if task.label else None
        out.append((str(row[task.text_a]).strip(), text_b, label))
    return out


def _read_lines(pattern: Path, task: Task) -> list[Record]:
    # One file per class; the concatenation is sorted by class, so it is shuffled once with a
    # fixed seed: a prefix of a whole split then has every class, whatever the split seed.
    out: list[Record] = []
    for label in range(task.num_labels):
        path = Path(str(pattern).format(label=label))
        _require_file(path, task)
        with open(path, encoding="utf-8") as fh:
            out += [(line.strip(), None, label) for line in fh if line.strip()]
    random.Random(0).shuffle(out)
    return out


def _require_file(path: Path, task: Task) -> None:
    if not path.is_file():
        hint = " (or PEMARITH_ONLINE=1 to load it from the hub)" if task.hub else ""
        raise PemarithError(f"task {task.name}: missing file {path}; {_HOW}{hint}")


@functools.lru_cache(maxsize=32)
def _cached_records(path: str, stamp: tuple[int, int], task: Task) -> tuple[Record, ...]:
    del stamp  # part of the cache key only: an edited file is read again
    fmt = task.source.format
    if fmt == "lines":
        return tuple(_read_lines(Path(path), task))
    if fmt == "raw":
        text = _read_raw(Path(path))
        return tuple((line.strip(), None, None) for line in text.splitlines() if line.strip())
    return tuple(_read_table(Path(path), task))


def _read_raw(path: Path) -> str:
    # Text mode: CRLF (as in the shared wikitext copy) becomes "\n".
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _local_path(task: Task, raw: str, data_dir: str | os.PathLike | None) -> Path:
    return resolve_data_dir(data_dir) / task.source.files[raw]


def _local_records(task: Task, raw: str, data_dir: str | os.PathLike | None) -> tuple[Record, ...]:
    path = _local_path(task, raw, data_dir)
    if task.source.format == "lines":
        probe = Path(str(path).format(label=0))
        _require_file(probe, task)
        stat = probe.stat()
    else:
        _require_file(path, task)
        stat = path.stat()
    return _cached_records(str(path), (stat.st_mtime_ns, stat.st_size), task)


# -- the hub ---------------------------------------------------------------------------------


def _hub_rows(task: Task, raw: str) -> list[dict[str, Any]]:
    hub = task.hub
    if hub is None:
        raise PemarithError(f"task {task.name} has no hub source; {_HOW}")
    if raw not in hub.splits:
        raise PemarithError(f"task {task.name}: the hub source has no {raw!r} split")
    try:
        import datasets  # optional: only online users need it
    except ImportError:
        raise PemarithError(
            f"loading task {task.name} from the hub needs the datasets package: "
            "pip install datasets (or use local files: " + _HOW + ")"
        ) from None
    ds = datasets.load_dataset(hub.path, hub.name, split=hub.splits[raw])
    return [row for row in ds if hub.keep is None or hub.keep(row)]


def _hub_records(task: Task, raw: str) -> tuple[Record, ...]:
    hub = task.hub
    rows = _hub_rows(task, raw)
    assert hub is not None  # _hub_rows raised otherwise
    if task.source.format == "raw":
        text = "".join(str(r[hub.text_a]) for r in rows)
        return tuple((line.strip(), None, None) for line in text.splitlines() if line.strip())
    out: list[Record] = []
    for row in rows:
        missing = [c for c in (hub.text_a, hub.text_b, hub.label) if c and c not in row]
        if missing:
            raise PemarithError(
                f"{hub.path}: expected columns {', '.join(missing)} (task {task.name}); "
                f"found {', '.join(row)}"
            )
        label: int | float | None = None
        if hub.label is not None and task.kind != "text":
            value = row[hub.label]
            if task.kind == "regression":
                label = float(value)
            elif int(value) >= 0:  # GLUE test rows have label -1: unlabelled
                label = int(value)
        text_b = str(row[hub.text_b]).strip() if hub.text_b else None
        out.append((str(row[hub.text_a]).strip(), text_b, label))
    return tuple(out)


# -- splits ------------------------------------------------------------------------------------


def _use_hub(task: Task, raw: str, data_dir: str | os.PathLike | None, source: str | None) -> bool:
    if source not in _SOURCES:
        raise PemarithError(f"source must be 'local', 'hub' or 'auto', got {source!r}")
    if source == "hub":
        return True
    if source == "local" or os.environ.get("PEMARITH_ONLINE") != "1" or task.hub is None:
        return False
    try:
        path = _local_path(task, raw, data_dir)
    except PemarithError:
        return True
    probe = Path(str(path).format(label=0)) if task.source.format == "lines" else path
    return not probe.is_file()


def _records(
    task: Task, raw: str, data_dir: str | os.PathLike | None, source: str | None
) -> tuple[Record, ...]:
    if isinstance(task.source, DatasetSource):  # a task file: datasets reads it
        from .taskfile import dataset_records

        return dataset_records(task, raw)
    if _use_hub(task, raw, data_dir, source):
        return _hub_records(task, raw)
    return _local_records(task, raw, data_dir)


def part_indices(n: int, part: Part, seed: int) -> list[int]:
    """Row indices of ``part`` in a file of ``n`` rows: all in order, or a slice of a shuffle."""
    if part.whole:
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[round(part.start * n) : round(part.stop * n)]


def _part(task: Task, split: str) -> Part:
    if split not in task.splits:
        raise PemarithError(f"task {task.name} has no split {split!r}; splits: {', '.join(task.splits)}")
    return task.splits[split]


def load_split(
    task: str | Task,
    split: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``split`` (``train``, ``validation``, ``test``) of ``task``.

    Each row is ``{"text_a", "text_b", "label"}`` (see the module docstring). ``seed`` selects
    the permutation for splits cut from a fraction of a file (e.g. GLUE validation/test halves
    of dev); whole-file splits do not depend on it. ``source``: ``"local"``, ``"hub"``, or
    None/``"auto"`` (local; the hub when the files are missing and ``PEMARITH_ONLINE=1``).
    """
    t = get_task(task)
    part = _part(t, split)
    records = _records(t, part.raw, data_dir, source)
    return [
        {"text_a": records[i][0], "text_b": records[i][1], "label": records[i][2]}
        for i in part_indices(len(records), part, seed)
    ]


def load_text(
    task: str | Task,
    split: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    source: str | None = None,
) -> list[str] | str:
    """The text of ``split``, without labels, for language modelling.

    ``wikitext`` (a raw-text task) gives the whole text as one string (CRLF read as ``"\\n"``),
    for perplexity with a stride. Every other task gives one string per row (``text_a``, and
    ``text_b`` after a newline for pair tasks): e.g. yelp/amazon reviews or civil_comments as
    an unlabelled corpus.
    """
    t = get_task(task)
    part = _part(t, split)
    if t.source.format == "raw" and part.whole:
        if _use_hub(t, part.raw, data_dir, source):
            rows = _hub_rows(t, part.raw)
            return "".join(str(r[t.hub.text_a]) for r in rows)  # type: ignore[union-attr]
        path = _local_path(t, part.raw, data_dir)
        _require_file(path, t)
        return _read_raw(path)
    rows = load_split(t, split, data_dir, seed, source)
    return [r["text_a"] if r["text_b"] is None else f"{r['text_a']}\n{r['text_b']}" for r in rows]
