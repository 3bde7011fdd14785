"""Errors users see. Every message is one line and names the fix where there is one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PemarithError(Exception):
    """Base class: the CLI prints ``pemarith: error: <message>`` and exits with status 2."""


class ExprError(PemarithError):
    """A malformed or non-linear expression; ``position`` is the 0-based column of the problem."""

    def __init__(self, message: str, text: str = "", position: int | None = None):
        self.text = text
        self.position = position
        where = f" at position {position + 1}" if position is not None else ""
        shown = f" in {text!r}" if text else ""
        super().__init__(f"{message}{where}{shown}")


class AdapterError(PemarithError):
    """A missing, truncated, corrupt or unsupported adapter directory or weights file."""


class CompatibilityError(PemarithError):
    """Adapters that cannot be composed together (kind, base model, targets, shapes, rank)."""


class OutputError(PemarithError):
    """The output path is unusable (exists, is an input, ...)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
