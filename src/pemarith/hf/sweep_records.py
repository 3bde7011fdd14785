"""A sweep's finished evaluations, appended to ``records.jsonl`` so that an interrupted sweep
resumes where it stopped (:class:`RecordCache`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..fs import check_records_dir
from .grid import key_of

Scores = dict[str, float]
RECORDS = "records.jsonl"


Item = tuple[str, str, "float | None"]  # (what, split, value)
Runner = Callable[[Sequence[Item]], Iterator[tuple[int, Scores, float]]]


class RecordCache:
    """Finished evaluations in ``DIR/records.jsonl``: one JSON object per line, appended.

    A record is ``{"what": "value" | "base" | "module:NAME", "split": ..., "value": float|None,
    "scores": {...}, "seconds": ...}``. Each line is flushed and fsynced when written, and a
    torn last line (a crash mid-write) is ignored on reading. Only the sweep's driver writes
    it: evaluations that run elsewhere (Ray actors, :mod:`pemarith.hf.sweep_ray`) are recorded
    by the driver as each one finishes.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        fingerprint: Mapping[str, Any],
        restart: bool = False,
    ):
        self.dir = Path(out).expanduser()
        self.path = self.dir / RECORDS
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))  # normalised JSON types
        self.records: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        self.reused = 0
        check_records_dir(
            self.dir, lambda d: (d / RECORDS).is_file(), "sweep directory (one with records.jsonl)"
        )
        if restart and self.path.exists():
            self.path.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            self._read(self.path)
        else:
            self._append({"fingerprint": self.fingerprint})

    def _read(self, path: Path) -> None:
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A write torn by a crash: drop the partial line so that appends start clean.
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(path, "r+b") as f:
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
                f"{self.dir} holds another sweep (differs in: {', '.join(diff) or 'header'}; "
                f"{path.name}); use another -o DIR, or --restart to discard its records"
            )
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a damaged line: that evaluation is simply redone
            self.records[(rec["what"], rec["split"], key_of(rec.get("value")))] = rec

    def _append(self, obj: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get(self, what: str, split: str, value: float | None = None) -> dict[str, Any] | None:
        return self.records.get((what, split, key_of(value)))

    def evaluate(self, what: str, split: str, value: float | None, compute: Callable[[], Scores]) -> Scores:
        """The cached scores, or ``compute()`` recorded before it is returned."""
        return self.evaluate_many([(what, split, value, compute)])[0]

    def _record(self, what: str, split: str, value: float | None, scores: Scores, seconds: float) -> None:
        rec = {"what": what, "split": split, "value": value, "scores": scores, "seconds": round(seconds, 4)}
        self._append(rec)
        self.records[(what, split, key_of(value))] = rec

    def evaluate_many(
        self,
        items: Sequence[tuple[str, str, float | None, Callable[[], Scores]]],
        run: Runner | None = None,
    ) -> list[Scores]:
        """The scores of every ``(what, split, value, compute)``: cached ones read back, the
        others computed, each recorded as soon as it is done. ``run`` computes the missing
        ``(what, split, value)`` items elsewhere (yielding ``(index, scores, seconds)`` in any
        order, e.g. on Ray actors); without it each item's ``compute()`` runs here, in order."""
        keys = [(what, split, key_of(value)) for what, split, value, _ in items]
        self.reused += sum(k in self.records for k in keys)
        first: dict[tuple[str, str, str | None], int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        todo = [i for k, i in first.items() if k not in self.records]  # each missing key once
        if run is None:
            for i in todo:
                what, split, value, compute = items[i]
                t0 = time.perf_counter()
                scores = compute()
                self._record(what, split, value, scores, time.perf_counter() - t0)
        else:
            for j, scores, seconds in run([items[i][:3] for i in todo]):
                what, split, value, _ = items[todo[j]]
                self._record(what, split, value, scores, seconds)
        return [dict(self.records[k]["scores"]) for k in keys]
