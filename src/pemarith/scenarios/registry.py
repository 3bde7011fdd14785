"""One table of scenario runners by name: ``SCENARIOS[recipe.scenario]``.

A scenario is four plain things: the dataclass of its ``[options]`` table, ``run(ctx)`` (train,
compose, tune, evaluate through a :class:`~pemarith.scenarios.runner.Context`, calling
``ctx.save(results)`` after each finished cell), ``sections(results) -> {name: markdown}`` (the
generated blocks of its report and docs page) and ``plot(results, out_dir) -> [png paths]``.
Both read only the results dict, so ``pemarith reproduce NAME --report`` rebuilds tables and
figures from a results file alone.

Adding a setting of the paper (unlearning 4.4, domain transfer 4.5, ...) is a module that
defines these four in a ``SCENARIO`` record, its name in the tuple at the bottom of this file,
and a recipe in ``experiments/``. No code elsewhere switches on scenario names.
"""

from __future__ import annotations

from ..errors import PemarithError, did_you_mean
from . import detox_instruct, distribution, domain_transfer, init_analysis, multitask, unlearning
from .scenario import Scenario

#: Scenario runners by name (the ``scenario`` key of a recipe).
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
        raise PemarithError(f"unknown scenario {name!r}{did_you_mean(name, SCENARIOS)}; "
                            f"known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


for _module in (distribution, multitask, init_analysis, unlearning, domain_transfer, detox_instruct):
    register(_module.SCENARIO)
