"""The records of a search: ``DIR/records.jsonl``, what a rerun resumes from.

The first line is the search's fingerprint (``{"fingerprint": {...}}``); every later line is one
finished evaluation, ``{"key", "split", "params", "scores", "seconds"}``, keyed by
:func:`params_key` (the variables' values rounded to 10 significant digits), so that a point the
replayed study proposes again is read back instead of evaluated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..fs import check_records_dir

RECORDS = "records.jsonl"
Scores = dict[str, float]


def params_key(params: Mapping[str, float]) -> str:
    """The records' key of a point: its values rounded to 10 significant digits, sorted by name."""
    return json.dumps({k: format(round(float(v), 10), ".10g") for k, v in sorted(params.items())})


class SearchRecords:
    """Finished evaluations in ``DIR/records.jsonl`` (a fingerprint line, then one JSON object per
    evaluation: ``key``, ``split``, ``params``, ``scores``, ``seconds``), flushed and fsynced per
    line; a torn last line (a crash mid-write) is dropped on reading."""

    def __init__(self, out: str | os.PathLike[str], fingerprint: Mapping[str, Any], restart: bool = False):
        self.dir = Path(out).expanduser()
        self.path = self.dir / RECORDS
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        check_records_dir(
            self.dir, lambda d: (d / RECORDS).is_file(), "search directory (one with records.jsonl)"
        )
        if restart and self.path.exists():
            self.path.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._read()
        else:
            self.append({"fingerprint": self.fingerprint})

    def _read(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(raw))
        lines = raw.decode("utf-8").splitlines()
        try:
            head = json.loads(lines[0])["fingerprint"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            head = None
        if head != self.fingerprint:
            diff = sorted(
                k
                for k in {*(head or {}), *self.fingerprint}
                if (head or {}).get(k) != self.fingerprint.get(k)
            )
            raise PemarithError(
                f"{self.dir} holds another search (differs in: {', '.join(diff) or 'header'}); "
                "use another -o DIR, or --restart to discard its records"
            )
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                self.records[(rec["key"], rec["split"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a damaged line: that evaluation is simply redone

    def append(self, obj: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get(self, params: Mapping[str, float], split: str) -> dict[str, Any] | None:
        return self.records.get((params_key(params), split))

    def add(
        self, params: Mapping[str, float], split: str, scores: Scores, seconds: float, **extra: Any
    ) -> dict[str, Any]:
        rec = {
            "key": params_key(params),
            "split": split,
            "params": dict(params),
            "scores": scores,
            "seconds": round(seconds, 4),
            **extra,
        }
        self.append(rec)
        self.records[(rec["key"], split)] = rec
        return rec
