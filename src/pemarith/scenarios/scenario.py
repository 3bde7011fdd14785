"""The record of one setting of the paper, runnable from a recipe, and the table of them by name.

The table lives here, below everything that looks a scenario up (:mod:`.recipe`, :mod:`.runner`,
:mod:`.docs`); :mod:`.registry`, above the scenario modules, fills it when the package is
imported. A lookup therefore never imports a scenario module, and no scenario module imports
the code that looks it up: the layers stay acyclic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PemarithError, did_you_mean


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


#: Scenario runners by name (the ``scenario`` key of a recipe); filled by :mod:`.registry`.
SCENARIOS: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add ``scenario`` to :data:`SCENARIOS` (a name may be registered once)."""
    if scenario.name in SCENARIOS:
        raise PemarithError(f"scenario {scenario.name!r} is registered twice")
    SCENARIOS[scenario.name] = scenario
    return scenario


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; an unknown name gets a did-you-mean."""
    if name not in SCENARIOS:
        raise PemarithError(
            f"unknown scenario {name!r}{did_you_mean(name, SCENARIOS)}; known: {', '.join(SCENARIOS)}"
        )
    return SCENARIOS[name]
