"""The record of one setting of the paper, runnable from a recipe (see :mod:`.registry`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scenario:
    """A setting of the paper, runnable from a recipe."""

    name: str
    section: str  # where in the paper, e.g. "4.2"
    options: type
    run: Callable[[Any], dict[str, Any]]
    sections: Callable[[Mapping[str, Any]], dict[str, str]]
    plot: Callable[[Mapping[str, Any], Path], list[Path]]
    title: str = ""
    #: blocks that need no results (e.g. the paper's own table): a page may show them before
    #: its full run exists, and the docs check accepts them there
    static: Callable[[], dict[str, str]] | None = None

    def render(self, results: Mapping[str, Any]) -> str:
        """The whole report: every section as a generated block under the title."""
        from .report import render_sections

        quick = " (quick run)" if results.get("recipe", {}).get("quick") else ""
        return render_sections(self.sections(results), f"{self.title}{quick}")
