"""Ray as the engine of ``pemarith search --ray [ADDRESS] --workers K``.

The driver keeps the Optuna study and the records (:mod:`pemarith.hf.search`); each of ``K`` Ray
actors loads the base model once (the same in-place :class:`~pemarith.hf.inplace.Session` as the
local loop) and evaluates the points the driver sends it. The driver asks the study for ``K``
trials at a time, sends one to each actor, records and tells them in the order asked (so a
``--sampler grid`` search writes the records a local run writes).

``--ray`` without an address starts a local Ray with ``K`` CPUs (``ray.init(num_cpus=K)``) and
stops it at the end; ``--ray ADDRESS`` (e.g. ``auto`` or ``ray://head:10001``) joins a running
cluster. Fault tolerance is Ray's (:mod:`pemarith.hf.ray_cluster`): an actor whose process dies
is restarted (it loads the model again) and the trial it held is retried; the records survive a
driver restart (resume as usual).

Ray is an optional extra: ``pip install 'pemarith[ray]'``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import PemarithError
from . import ray_cluster

Scores = dict[str, float]


class _Worker:
    """One actor: the model loaded once (lazily), compositions written in place."""

    def __init__(self, config: Any):
        from .search import LocalEvaluator, default_session, prepare

        prepared = prepare(config, log=lambda m: None)
        self.local = LocalEvaluator(default_session(config, prepared), prepared.compose, config)

    def evaluate(self, params: Mapping[str, float], split: str) -> tuple[Scores, float]:
        return self.local.evaluate([params], split)[0]

    def pid(self) -> int:
        import os

        return os.getpid()


class RayEvaluator:
    """Evaluates batches of points on ``workers`` Ray actors (see the module docstring)."""

    engine = "ray"

    def __init__(self, config: Any, workers: int = 2, address: str | None = None):
        if workers < 1:
            raise PemarithError(f"--workers must be at least 1, got {workers}")
        self.ray, self.workers, self.config = ray_cluster.ray_module(), workers, config
        self.started = ray_cluster.start(workers, address)
        self.actors = ray_cluster.actors(_Worker, workers, config)
        from .inplace import primary_metrics
        from .tasks import get_task

        self._tasks = [get_task(t) for t in config.tasks]
        self._primary = primary_metrics

    def primary_metrics(self, keys: Sequence[str]) -> list[str]:
        return self._primary(self._tasks, keys)

    def evaluate(self, points: Sequence[Mapping[str, float]], split: str) -> list[tuple[Scores, float]]:
        """The scores of ``points``, in order; at most one point per actor at a time."""
        out: list[tuple[Scores, float] | None] = [None] * len(points)
        calls = [(dict(p), split) for p in points]
        for i, result in ray_cluster.map_unordered(self.actors, "evaluate", calls):
            out[i] = result
        return [o for o in out if o is not None]

    def pids(self) -> list[int]:
        """The actors' process ids (for tests that kill one)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        ray_cluster.stop(self.actors, self.started)


def ray_engine(workers: int, address: str | None) -> Any:
    """An ``engine`` for :func:`~pemarith.hf.search.run_search`."""
    ray_cluster.ray_module()  # fail before anything else when Ray is missing

    def start(config: Any, prepared: Any) -> RayEvaluator:
        t = time.perf_counter()
        ev = RayEvaluator(config, workers, address)
        ev.start_seconds = time.perf_counter() - t
        return ev

    return start
