"""The Appendix B subsets of a recipe's tasks: which subset seed gives the class the recipe pins
(``[options.selected]``), and Table 9 for the draws used (:func:`skew_table`)."""

from __future__ import annotations

from typing import Any

from ..errors import PemarithError
from .runner import Context

_SUBSET_SEEDS: dict[tuple, int] = {}


def subset_seed(ctx: Context, task: str) -> int:
    """The subset seed of ``task``: ``subset_seed``, or the first one from it whose draw selects
    the class ``selected`` asks for."""
    o = ctx.recipe.options
    want = o.selected.get(task)
    if want is None:
        return o.subset_seed
    key = (task, want, o.subset_seed, o.subset_size, ctx.data_dir)
    if key not in _SUBSET_SEEDS:
        from ..hf.data import load_split
        from ..hf.skew import class_counts, feasible_classes

        rows = load_split(task, "train", data_dir=ctx.data_dir)
        if want not in feasible_classes(rows):
            counts = class_counts(rows)
            shares = ", ".join(f"class {c}: {n / len(rows):.1%}" for c, n in counts.items())
            raise PemarithError(
                f"[options.selected] {task} = {want}: s0 would hold that class alone "
                f"({shares}; at most 62.5% can be selected): pin a minority class"
            )
        for s in range(o.subset_seed, o.subset_seed + 200):
            if ctx.subsets(task, s, o.subset_size).selected == want:
                _SUBSET_SEEDS[key] = s
                break
        else:
            raise PemarithError(
                f"{task}: no subset seed in {o.subset_seed}..{o.subset_seed + 199}"
                f" selects class {want}; is it a class of {task}?"
            )
    return _SUBSET_SEEDS[key]


def skew_table(ctx: Context, tasks: Any) -> dict[str, Any]:
    """Table 9 for our draw: the selected class and each subset's class counts."""
    o = ctx.recipe.options
    out = {}
    for task in tasks:
        seed = subset_seed(ctx, task)
        split = ctx.subsets(task, seed, o.subset_size)
        t = split.table()
        out[task] = {
            "selected": split.selected,
            "subset_seed": seed,
            "s0": list(t["s0"].values()),
            "s1": list(t["s1"].values()),
        }
    return out
