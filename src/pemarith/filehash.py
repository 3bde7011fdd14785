"""sha256 of a file from the byte ranges read out of it, hashed on a background thread.

A composition reads every tensor of its inputs once and records each input's sha256: hashing
the bytes as they are read costs one pass, not two, and doing it on a second thread overlaps
it with the arithmetic and the writing (sha256 of 1.6 GB of adapters is about a second of
one core; ``hashlib`` releases the GIL on large buffers).

The hash is of the file's bytes in order. A range that extends the hashed prefix is hashed;
one further on first hashes the gap (the header, tensors skipped) from the file; one inside the
prefix was hashed already. All jobs of the process go through one worker in FIFO order (so a
file's ranges stay in order) and a bounded queue (so a slow disk cannot pile up read buffers).
Before a fork the queue is drained (so a child inherits finished hashers), and a forked child
starts its own worker.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import AdapterError

_QUEUE_DEPTH = 8  # jobs waiting at most: each holds one tensor's bytes
_WORKER: tuple[int, queue.Queue[Callable[[], None]]] | None = None
_LOCK = threading.Lock()


def _jobs() -> queue.Queue[Callable[[], None]]:
    global _WORKER
    with _LOCK:
        if _WORKER is None or _WORKER[0] != os.getpid():
            jobs: queue.Queue[Callable[[], None]] = queue.Queue(_QUEUE_DEPTH)
            threading.Thread(target=_work, args=(jobs,), name="pemarith-sha256", daemon=True).start()
            _WORKER = (os.getpid(), jobs)
        return _WORKER[1]


def _work(jobs: queue.Queue[Callable[[], None]]) -> None:
    while True:
        jobs.get()()


def _drain() -> None:
    """Wait until every job queued so far in this process has run."""
    if _WORKER is not None and _WORKER[0] == os.getpid():
        done = threading.Event()
        _WORKER[1].put(done.set)
        done.wait()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_drain)


class FileHash:
    """The sha256 of ``path``, fed with ``feed(start, raw)`` as its bytes are read."""

    def __init__(self, path: Path):
        self.path = path
        self._hasher = hashlib.sha256()
        self._fed = 0  # bytes of the file's prefix handed to the worker
        self._digest: str | None = None
        self._error: AdapterError | None = None  # raised by hexdigest (a job cannot raise)

    def feed(self, start: int, raw: bytes) -> None:
        """``raw`` is the file's bytes from offset ``start``."""
        if self._digest is not None or start + len(raw) <= self._fed:
            return
        if start > self._fed:
            self._submit_range(self._fed, start)
        skip = self._fed - start  # > 0: the read overlaps the hashed prefix
        data = memoryview(raw)[skip:] if skip > 0 else raw
        _jobs().put(lambda: self._hasher.update(data))
        self._fed = start + len(raw)

    def _submit_range(self, start: int, end: int) -> None:
        _jobs().put(lambda: self._hash_range(start, end))
        self._fed = end

    def _hash_range(self, start: int, end: int) -> None:  # on the worker
        if self._error is not None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                left = end - start
                while left > 0:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise AdapterError(f"{self.path}: truncated while hashing")
                    self._hasher.update(chunk)
                    left -= len(chunk)
        except OSError as e:
            self._error = AdapterError(f"{self.path}: cannot read while hashing ({e.strerror or e})")
        except AdapterError as e:
            self._error = e

    def hexdigest(self) -> str:
        """The file's sha256 (cached): the bytes fed so far plus the rest of the file."""
        if self._digest is None:
            self._submit_range(self._fed, self.path.stat().st_size)
            _drain()
            if self._error is not None:
                raise self._error
            self._digest = self._hasher.hexdigest()
        return self._digest
