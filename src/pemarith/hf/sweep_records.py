"""A sweep's finished evaluations, appended to ``records.jsonl`` so that an interrupted sweep
resumes where it stopped (:class:`RecordCache`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..fs import check_records_dir
from .grid import key_of

Scores = dict[str, float]
RECORDS = "records.jsonl"


class RecordCache:
    """Finished evaluations in ``DIR/records.jsonl``: one JSON object per line, appended.

    A record is ``{"what": "value" | "base" | "module:NAME", "split": ..., "value": float|None,
    "scores": {...}, "seconds": ...}``. Each line is flushed and fsynced when written, and a
    torn last line (a crash mid-write) is ignored on reading.

    With ``worker`` (a distributed sweep, :mod:`pemarith.hf.distributed`) this worker appends to
    its own ``records-WORKER.jsonl``, reads every ``records*.jsonl`` of the directory, and
    :meth:`evaluate_many` shares a stage with the other workers through claims.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        fingerprint: Mapping[str, Any],
        restart: bool = False,
        worker: str | None = None,
        claim_timeout: float = 3600.0,
        poll: float = 2.0,
        log: Callable[[str], None] | None = None,
    ):
        self.dir = Path(out).expanduser()
        self.worker = worker
        self.path = self.dir / (f"records-{worker}.jsonl" if worker else RECORDS)
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))  # normalised JSON types
        self.records: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        self.reused = 0
        self.poll, self.log = poll, log
        check_records_dir(
            self.dir,
            lambda d: any(d.glob("records*.jsonl")) or (d / "claims").is_dir(),
            "sweep directory (one with records.jsonl)",
        )
        if restart and worker:
            raise PemarithError(
                "--restart cannot join a distributed sweep (the other workers' records "
                "would stay); run it once without workers, then start the workers"
            )
        if restart and self.path.exists():
            self.path.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.refresh()
        if not self.path.exists():
            self._append({"fingerprint": self.fingerprint})
        self.claims = None
        if worker:
            from .distributed import Claims

            self.claims = Claims(self.dir, worker, claim_timeout)

    def files(self) -> list[Path]:
        """This sweep's record files: ``records.jsonl`` and the workers' ``records-*.jsonl``."""
        found = sorted(self.dir.glob("records-*.jsonl")) if self.worker else []
        return [p for p in [self.dir / RECORDS, *found] if p.is_file()]

    def refresh(self) -> None:
        """(Re)read every record file of the directory."""
        for path in self.files():
            self._read(path)

    def _read(self, path: Path) -> None:
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            if path == self.path:
                # A write torn by a crash: drop the partial line so that appends start clean.
                # (Another worker's file may just be mid-write: its last line is skipped.)
                with open(self.path, "r+b") as f:
                    f.truncate(len(raw))
        lines = raw.decode("utf-8").splitlines()
        try:
            head = json.loads(lines[0])["fingerprint"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            head = None
        if head is None and not lines and path != self.path:
            return  # another worker's file, created a moment ago
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

    def _compute(self, what: str, split: str, value: float | None, compute: Callable[[], Scores]) -> None:
        t0 = time.perf_counter()
        scores = compute()
        rec = {
            "what": what,
            "split": split,
            "value": value,
            "scores": scores,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        if self.worker:
            rec["worker"] = self.worker
        self._append(rec)
        self.records[(what, split, key_of(value))] = rec

    def evaluate_many(
        self, items: Sequence[tuple[str, str, float | None, Callable[[], Scores]]]
    ) -> list[Scores]:
        """The scores of every ``(what, split, value, compute)``: cached ones read back, the others
        computed. In a distributed sweep this worker computes the items it can claim and waits
        for the others' records (polling every ``poll`` seconds)."""
        keys = [(what, split, key_of(value)) for what, split, value, _ in items]
        cached = sum(k in self.records for k in keys)
        if self.claims is None:
            for (what, split, value, compute), key in zip(items, keys):
                if key not in self.records:
                    self._compute(what, split, value, compute)
        else:
            waited = 0.0
            while True:
                missing = [(item, key) for item, key in zip(items, keys) if key not in self.records]
                if not missing:
                    break
                progressed = False
                for (what, split, value, compute), key in missing:
                    name = f"{what}@{split}@{key[2]}"
                    if not self.claims.take(name):
                        continue
                    try:
                        self.refresh()  # another worker may have finished it just before the claim
                        if key not in self.records:
                            self._compute(what, split, value, compute)
                    finally:
                        self.claims.release(name)
                    progressed = True
                    break  # re-read: the others may have finished more meanwhile
                if not progressed:
                    if self.log and waited == 0.0:
                        self.log(f"waiting for {len(missing)} evaluation(s) other workers hold")
                    time.sleep(self.poll)
                    waited += self.poll
                    self.refresh()
        self.reused += cached
        return [dict(self.records[k]["scores"]) for k in keys]
