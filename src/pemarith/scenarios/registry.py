"""The scenarios of the paper, registered by name: ``SCENARIOS[recipe.scenario]``.

A scenario is four plain things: the dataclass of its ``[options]`` table, ``run(ctx)`` (train,
compose, tune, evaluate through a :class:`~pemarith.scenarios.runner.Context`, calling
``ctx.save(results)`` after each finished cell), ``sections(results) -> {name: markdown}`` (the
generated blocks of its report and docs page) and ``plot(results, out_dir) -> [png paths]``.
Both read only the results dict, so ``pemarith reproduce NAME --report`` rebuilds tables and
figures from a results file alone.

Adding a setting of the paper (unlearning 4.4, domain transfer 4.5, ...) is a module that
defines these four in a ``SCENARIO`` record, its name in the tuple at the bottom of this file,
and a recipe in ``experiments/``. No code elsewhere switches on scenario names. The table
itself (and ``get_scenario``) lives in :mod:`.scenario`, below the code that looks names up.
"""

from __future__ import annotations

from . import detox_instruct, distribution, domain_transfer, init_analysis, multitask, unlearning
from .scenario import SCENARIOS, Scenario, get_scenario, register

__all__ = ["SCENARIOS", "Scenario", "get_scenario", "register"]

for _module in (distribution, multitask, init_analysis, unlearning, domain_transfer, detox_instruct):
    register(_module.SCENARIO)
