"""Ray, the distributed engine of ``search --ray`` and ``sweep --ray/--workers``: starting or
joining a cluster, creating fault-tolerant actors, and turning an actor's failure back into
pemarith's one-line error.

``start(workers, address)`` joins the cluster at ``address`` (``auto``, ``ray://head:10001``)
or, without one, starts a local Ray with ``workers`` CPUs; the caller stops it (``stop``) only
if it started it. Actors are created with ``max_restarts=-1`` and ``max_task_retries=-1``: an
actor whose process dies is restarted by Ray (and loads the model again) and the call it held
is retried, so a killed worker costs one evaluation's time, never a result.

Ray is an optional extra: ``pip install 'pemarith[ray]'``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import PemarithError


def ray_module(option: str = "--ray") -> Any:
    """``import ray``, or the one-line error that names the extra."""
    try:
        import ray
    except ImportError:
        raise PemarithError(f"{option} needs Ray: pip install 'pemarith[ray]'") from None
    return ray


def start(workers: int, address: str | None, option: str = "--ray") -> bool:
    """Connect to Ray (see the module docstring); True when this call started it."""
    ray = ray_module(option)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=workers, **options)
    return True


def actors(cls: type, workers: int, *args: Any) -> list[Any]:
    """``workers`` actors of ``cls(*args)``, one CPU each, restarted and retried by Ray."""
    ray = ray_module()
    remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(cls)
    return [remote.remote(*args) for _ in range(workers)]


def get(ref: Any) -> Any:
    """``ray.get(ref)``, re-raising a :class:`PemarithError` raised in the actor as itself."""
    ray = ray_module()
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the evaluation itself failed
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
        if isinstance(cause, PemarithError):
            raise cause from None
        raise


def map_unordered(
    handles: Sequence[Any], method: str, calls: Sequence[tuple[Any, ...]]
) -> Iterator[tuple[int, Any]]:
    """``(i, handles[k].method(*calls[i]))`` for every call, as each finishes, with at most one
    call per actor at a time (an actor holds one model: a second call would only queue)."""
    ray = ray_module()
    pending: dict[Any, tuple[int, int]] = {}  # ref -> (call index, actor index)
    queue = list(range(len(calls)))
    idle = list(range(len(handles)))
    while queue or pending:
        while queue and idle:
            i, a = queue.pop(0), idle.pop(0)
            pending[getattr(handles[a], method).remote(*calls[i])] = (i, a)
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i, a = pending.pop(ref)
            result = get(ref)
            idle.append(a)
            yield i, result


def stop(handles: list[Any], started: bool) -> None:
    """Kill the actors; shut Ray down if :func:`start` started it."""
    ray = ray_module()
    for actor in handles:
        ray.kill(actor)
    handles.clear()
    if started:
        ray.shutdown()
