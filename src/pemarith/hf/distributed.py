"""Sharing a sweep among workers through its output directory: claims on a shared file system.

A distributed sweep is the same ``pemarith sweep`` command started several times on one
directory: by ``--workers N`` on this machine, or by hand (a scheduler's array job) on machines
that mount the directory. The workers are peers. Each loads the model once, runs the same
search, and for every stage (the grid; or refine's coarse values, then its fine values) takes
values that no one has claimed, records their scores in its own ``records-WORKER.jsonl``, and
waits for the rest of the stage to appear in the others' records. Since every worker sees the
same records, every worker reaches the same pick; each writes the same result files.

A claim is a file ``claims/<what>@<split>@<value>`` created with ``O_CREAT | O_EXCL`` (atomic on
local file systems and NFS v3+), holding the worker, host, pid and time. A claim is stale, and
is taken over, when its process is gone (same host) or it is older than ``claim_timeout``
seconds (any host): a worker that dies mid-evaluation holds up nothing for long.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLAIMS = "claims"


def default_worker() -> str:
    """``HOST-PID``: unique among the workers of one directory."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Claims:
    """The claims of one sweep directory, as seen by ``worker``."""

    def __init__(self, out: Path, worker: str, timeout: float = 3600.0):
        self.dir = Path(out) / CLAIMS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.worker, self.timeout, self.host = worker, timeout, socket.gethostname()

    def path(self, name: str) -> Path:
        return self.dir / re.sub(r"[^A-Za-z0-9_.@=+-]", "_", name)

    def take(self, name: str) -> bool:
        """Claim ``name``; False if another worker holds a live claim on it."""
        path = self.path(name)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._break_if_stale(path):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(
                    {"worker": self.worker, "host": self.host, "pid": os.getpid(), "time": time.time()}, f
                )
            return True
        return False

    def release(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def _break_if_stale(self, path: Path) -> bool:
        try:
            info = json.loads(path.read_text())
            age = time.time() - float(info["time"])
            dead = info.get("host") == self.host and not _alive(int(info["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            # Being written right now (empty), or damaged: stale only once old enough.
            try:
                age, dead = time.time() - path.stat().st_mtime, False
            except FileNotFoundError:
                return True
        if dead or age > self.timeout:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return True
        return False


# ----------------------------------------------------------------------------- local workers


def start_local_workers(config: Any, log: Callable[[str], None]) -> tuple[list[subprocess.Popen], Path]:
    """Start ``config.workers - 1`` peer processes on this machine (the caller is the last one).

    Each runs :func:`pemarith.hf.sweep_worker.worker_main` on the same configuration with
    ``distributed=True``; torch
    threads are split between the workers (``OMP_NUM_THREADS``, unless set).
    """
    n = config.workers
    peer = dataclasses.replace(config, workers=1, distributed=True, worker=None)
    spec = Path(config.out).expanduser() / CLAIMS / f"config-{os.getpid()}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(dataclasses.asdict(peer)))
    threads = str(max(1, (os.cpu_count() or 1) // n))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    os.environ.setdefault("OMP_NUM_THREADS", threads)  # this process too, if torch is not loaded yet
    procs = [
        subprocess.Popen([sys.executable, "-m", "pemarith.hf.sweep_worker", str(spec)], env=env)
        for _ in range(n - 1)
    ]
    log(f"started {n - 1} more worker(s) on this machine: pids {', '.join(str(p.pid) for p in procs)}")
    return procs, spec


def finish_local_workers(
    procs: list[subprocess.Popen], spec: Path, log: Callable[[str], None], stop: bool
) -> None:
    """Wait for the peers (they end once every evaluation is recorded); ``stop`` terminates them."""
    for p in procs:
        if stop and p.poll() is None:
            p.terminate()
        code = p.wait()
        if code != 0 and not stop:
            log(f"note: worker pid {p.pid} exited with status {code} (its claims were taken over)")
    spec.unlink(missing_ok=True)
