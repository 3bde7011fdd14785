"""What the kinds' live-adapter rules share (:func:`config_differences`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _norm(value: Any) -> Any:
    # target_modules may be a list in one config and a set in another: compared as sets
    if isinstance(value, (list, tuple, set, frozenset)):
        return frozenset(value)
    return value


def config_differences(fields: Iterable[str], live: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"field live vs new"`` for each of ``fields`` whose values differ (lists compared as sets)."""
    return [
        f"{k} {live.get(k)!r} vs {new.get(k)!r}" for k in fields if _norm(live.get(k)) != _norm(new.get(k))
    ]
