"""Ray as the engine of ``pemarith sweep --ray [ADDRESS] --workers K`` (and of ``--workers K``
alone, on a local Ray).

The sweep's process (the driver) runs the search and keeps ``records.jsonl``; each stage's
missing evaluations (the grid; refine's coarse values, then its fine values; the modules alone;
the pick on test) go to ``K`` Ray actors, at most one per actor at a time. Each actor loads the
base model once (the same in-place :class:`~pemarith.hf.inplace.Session` and
:class:`~pemarith.hf.sweep.Evaluations` as a local sweep) and returns the scores; the driver
records each as it arrives, so an interrupted sweep resumes from its records like a local one,
and the records, pick and files equal a local run's. An actor killed mid-evaluation is
restarted by Ray and its evaluation retried (:mod:`pemarith.hf.ray_cluster`). Ray starts on
the first evaluation that is not in the records: a sweep whose records are complete starts none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import ray_cluster

Scores = dict[str, float]


class _Actor:
    """One Ray actor: the sweep prepared and its session (the model loaded once, lazily)."""

    def __init__(self, config: Any, build: Callable[[Any], Any]):
        self.evaluations = build(config)  # pemarith.hf.sweep.actor_evaluations

    def compute(self, what: str, split: str, value: float | None) -> tuple[Scores, float]:
        t = time.perf_counter()
        scores = self.evaluations.compute(what, split, value)
        return scores, time.perf_counter() - t

    def pid(self) -> int:
        import os

        return os.getpid()


class RaySweep:
    """The evaluations of one sweep on ``config.workers`` actors (see the module docstring)."""

    def __init__(self, config: Any, build: Callable[[Any], Any], log: Callable[[str], None] = lambda m: None):
        ray_cluster.ray_module("--ray" if config.ray is not None else "--workers")  # fail early
        self.config, self.build, self.log = config, build, log
        self.handles: list[Any] = []
        self.started = False

    def _start(self) -> None:
        if self.handles:
            return
        config = self.config
        t = time.perf_counter()
        self.started = ray_cluster.start(config.workers, config.ray or None)
        self.handles = ray_cluster.actors(_Actor, config.workers, config, self.build)
        where = f"the Ray cluster at {config.ray}" if config.ray else "a local Ray"
        self.log(f"{config.workers} Ray actor(s) on {where} ({time.perf_counter() - t:.1f} s to start)")

    def run(self, items: Sequence[tuple[str, str, float | None]]) -> Iterator[tuple[int, Scores, float]]:
        """``(index, scores, seconds)`` of each ``(what, split, value)``, as each finishes."""
        if not items:
            return
        self._start()
        var = self.config.var
        for i, (scores, seconds) in ray_cluster.map_unordered(self.handles, "compute", list(items)):
            what, split, value = items[i]
            label = f"{var}={value:<8g}" if what == "value" else f"{what:<10}"
            self.log(f"{label} {split:<10} done on Ray ({seconds:.1f} s)")
            yield i, scores, seconds

    def pids(self) -> list[int]:
        """The actors' process ids (for tests that kill one)."""
        self._start()
        return [ray_cluster.get(h.pid.remote()) for h in self.handles]

    def close(self) -> None:
        if self.handles or self.started:
            ray_cluster.stop(self.handles, self.started)
            self.started = False
