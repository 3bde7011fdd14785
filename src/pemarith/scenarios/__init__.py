"""The paper's settings as recipes: ``pemarith reproduce NAME``.

- :mod:`.recipe`: TOML recipes -> frozen dataclasses (unknown keys fail, ``[quick]``, ``extends``).
- :mod:`.store`: the content-addressed store of finished work (modules, sweeps, evaluations).
- :mod:`.runner`: :class:`~.runner.Context`, what scenario functions drive: cached training,
  sweeps and scores; ``results.json``, ``report.md`` and plots after every finished cell.
- :mod:`.registry`: ``SCENARIOS``, one table of scenario runners by name
  (:mod:`.distribution` 4.2, :mod:`.multitask` 4.3, :mod:`.init_analysis` 4.7).
- :mod:`.report`, :mod:`.paper`, :mod:`.docs`: tables, the paper's numbers, the docs pages.

Nothing here imports torch at import time; running a scenario imports :mod:`pemarith.hf`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .recipe import Recipe, RecipeError, load_recipe
from .registry import SCENARIOS, get_scenario

__all__ = [
    "SCENARIOS",
    "Recipe",
    "RecipeError",
    "default_out",
    "get_scenario",
    "load_recipe",
    "reproduce",
]

#: Where reproductions write by default (one directory per recipe, the store beside them).
DEFAULT_ROOT = Path("runs") / "reproduce"


def default_out(recipe: Recipe) -> Path:
    """``runs/reproduce/<name>`` (``<name>-quick`` for a quick run)."""
    return DEFAULT_ROOT / (recipe.name + ("-quick" if recipe.quick else ""))


def reproduce(
    name: str,
    quick: bool = False,
    out: str | Path | None = None,
    store: str | Path | None = None,
    data_dir: str | Path | None = None,
    seeds: list[int] | None = None,
    tasks: list[str] | None = None,
    threads: int | None = None,
    progress: bool = False,
    **context: Any,
) -> dict[str, Any]:
    """Run the recipe ``name`` (resuming: finished work is read from the store); the results.

    ``store`` defaults to ``store/`` beside ``out`` (so 4.2 and 4.7 share their modules).
    ``context`` goes to :class:`~.runner.Context` (``trainer``, ``log``, ``plots``).
    """
    from .runner import Context, set_threads
    from .store import Store

    recipe = load_recipe(name, quick=quick, seeds=seeds, tasks=tasks)
    out_dir = Path(out) if out is not None else default_out(recipe)
    set_threads(threads)
    ctx = Context(
        recipe,
        out_dir,
        Store(store) if store is not None else None,
        data_dir=data_dir,
        progress=progress,
        **context,
    )
    ctx.log(
        f"reproduce {recipe.name}{' (quick)' if quick else ''}: {recipe.source} -> {out_dir}"
        f" (store {ctx.store.root})"
    )
    return get_scenario(recipe.scenario).run(ctx)
