"""The values a sweep tries: ``START:STOP:STEP`` or a comma list (:func:`parse_grid`), and the
stable key each value is recorded under (:func:`key_of`)."""

from __future__ import annotations

import math

from ..errors import PemarithError

MAX_POINTS = 10_001


def parse_grid(text: str) -> tuple[float, ...]:
    """``"0:1:0.02"`` (start:stop:step, stop included) or ``"0,0.25,1"`` -> sorted values."""
    text = str(text).strip()
    hint = "use START:STOP:STEP (e.g. 0:1:0.02) or a comma list (e.g. 0,0.5,1)"
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
        else:
            values = sorted({float(p) for p in text.split(",") if p.strip()})
            if not values:
                raise ValueError
    except ValueError:
        raise PemarithError(f"bad grid {text!r}; {hint}") from None
    if ":" in text:
        if not all(math.isfinite(x) for x in (start, stop, step)) or step <= 0 or stop < start:
            raise PemarithError(f"bad grid {text!r}: need START <= STOP and STEP > 0; {hint}")
        n = math.floor((stop - start) / step + 1e-9) + 1
        if n > MAX_POINTS:
            raise PemarithError(f"grid {text!r} has {n} points; at most {MAX_POINTS}")
        # From indices, rounded, so that 0.1*3 is 0.3 and cached values match across runs.
        values = [round(start + i * step, 10) for i in range(n)]
    if not all(math.isfinite(v) for v in values):
        raise PemarithError(f"bad grid {text!r}: values must be finite")
    return tuple(values)


def key_of(value: float | None) -> str | None:
    """A value's cache key: stable across runs (``0.3`` whether computed as 0.1*3 or typed)."""
    return None if value is None else format(round(float(value), 10), ".10g")
