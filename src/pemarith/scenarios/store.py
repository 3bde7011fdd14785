"""A content-addressed store of finished work: trained modules, sweeps, evaluations.

Every unit of work is a directory or a JSON file whose name carries a hash of everything that
determines it (model, task, data, hyperparameters, the weights' sha256 for what is computed from
modules). Finished work is recognised by a marker written last (``training.json`` for a module,
``results.json`` for a sweep, the JSON file itself for an evaluation), and every write is atomic
(a temporary name, then ``os.replace``), so an interrupted run leaves no half-finished unit and a
rerun skips exactly what is done. Two recipes that need the same module (4.2 and 4.7) share it.

Layout under the store root (default ``runs/reproduce/store``)::

    modules/<model>/<task>/<kind>-<data>-init<I>-seed<S>-<hash>/   adapter or model + training.json
    sweeps/<model>/<tasks>/<label>-<hash>/                         records.jsonl, results.json, sweep.png
    evals/<model>/<tasks>/<label>-<hash>.json                      one evaluation
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..fs import write_file


def digest(obj: Any, n: int = 12) -> str:
    """First ``n`` hex digits of the sha256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(obj, indent=1, default=_default) + "\n")


def _default(obj: Any) -> Any:
    if isinstance(obj, float):  # NaN/inf never reach here (json writes them); other types do
        return None
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(module_dir: Path) -> str:
    """sha256 over a module directory's weight files (adapter or full model), by name."""
    module_dir = Path(module_dir)
    files = sorted(module_dir.glob("*.safetensors")) or sorted(module_dir.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


class Store:
    """The store under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()
        self.hits = 0  # units found finished (for logs and tests)
        self.computed = 0

    def module_dir(self, model: str, task: str, name: str, key: Mapping[str, Any]) -> Path:
        return self.root / "modules" / _safe(model) / task / f"{name}-{digest(key)}"

    def sweep_dir(self, model: str, tasks: str, label: str, key: Mapping[str, Any]) -> Path:
        return self.root / "sweeps" / _safe(model) / tasks / f"{label}-{digest(key)}"

    def eval_file(self, model: str, tasks: str, label: str, key: Mapping[str, Any]) -> Path:
        return self.root / "evals" / _safe(model) / tasks / f"{label}-{digest(key)}.json"

    def cached_json(self, path: Path, compute: Callable[[], Any]) -> Any:
        """The JSON at ``path`` if it exists; else ``compute()``, written atomically, returned."""
        if path.is_file():
            try:
                value = read_json(path)
                self.hits += 1
                return value
            except json.JSONDecodeError:
                pass  # a damaged file (should not happen: writes are atomic): redo it
        value = compute()
        write_json(path, value)
        self.computed += 1
        return value


def _safe(name: str) -> str:
    """A model name usable as one path component (a local path or hub id becomes its last part)."""
    return name.replace("\\", "/").rstrip("/").split("/")[-1] or "model"
