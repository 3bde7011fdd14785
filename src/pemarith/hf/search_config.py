"""The options of ``pemarith search``: one variable's range (:class:`Var`) and the whole
configuration (:class:`SearchConfig`, validated on construction)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..errors import PemarithError, did_you_mean
from ..methods import MergeSpec

SAMPLERS = ("tpe", "cmaes", "random", "grid")
MAX_GRID = 10_000
#: Metrics that are better when smaller (the direction of ``--objective``).
MINIMISED = ("loss", "perplexity", "toxicity", "toxic_share", "mse", "mae", "rmse")


@dataclass(frozen=True)
class Var:
    """A searched variable: ``lo <= value <= hi``, on ``lo + k*step`` when ``step`` is given."""

    name: str
    lo: float
    hi: float
    step: float | None = None

    def grid(self) -> list[float]:
        if self.step is None:
            raise PemarithError(
                f"--sampler grid needs a step for --var {self.name}: "
                f"--var {self.name}={self.lo:g}:{self.hi:g}:STEP"
            )
        n = math.floor((self.hi - self.lo) / self.step + 1e-9) + 1
        return [round(self.lo + i * self.step, 10) for i in range(n)]


def parse_var(text: str) -> Var:
    """``NAME=LO:HI`` or ``NAME=LO:HI:STEP`` -> :class:`Var` (finite, ``LO < HI``, ``STEP > 0``)."""
    name, sep, spec = str(text).partition("=")
    name = name.strip()
    hint = "use NAME=LO:HI or NAME=LO:HI:STEP, e.g. --var a=0:1 or --var a=0:1:0.25"
    if not sep or not name.isidentifier():
        raise PemarithError(f"--var {text!r} must look like NAME=LO:HI; {hint}")
    try:
        parts = [float(p) for p in spec.split(":")]
    except ValueError:
        raise PemarithError(f"--var {text!r}: bounds must be numbers; {hint}") from None
    if len(parts) not in (2, 3) or not all(math.isfinite(p) for p in parts):
        raise PemarithError(f"--var {text!r}: {hint}")
    lo, hi, step = parts[0], parts[1], (parts[2] if len(parts) == 3 else None)
    if not lo < hi:
        raise PemarithError(f"--var {text!r}: need LO < HI, got {lo:g} and {hi:g}")
    if step is not None and not 0 < step <= hi - lo:
        raise PemarithError(f"--var {text!r}: need 0 < STEP <= HI - LO")
    return Var(name, lo, hi, step)


@dataclass(frozen=True)
class SearchConfig:
    """One search. ``variables`` are :class:`Var` or ``NAME=LO:HI[:STEP]`` strings."""

    expr: str
    modules: Mapping[str, str]
    model: str
    tasks: tuple[str, ...]
    out: str
    variables: tuple[Any, ...]
    budget: int = 40
    sampler: str = "tpe"
    seed: int = 0
    objective: str | None = None  # a metric (default: the first task's first) or "loss"
    l1: float = 0.0
    mode: str = "factorwise"
    rank: int | None = None
    merge: MergeSpec = field(default_factory=MergeSpec)  # the merge method (default linear)
    keep: str | None = None
    limit: int | None = None
    split_seed: int = 0
    data_dir: str | None = None
    val_split: str = "validation"
    test_split: str | None = "test"
    batch_size: int = 32
    device: str | None = None  # pemarith.hf.hardware (None: float32 on the CPU)
    dtype: str | None = None
    max_tokens: int | None = None
    samples: int | None = None
    restart: bool = False
    plot: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "tasks", tuple(self.tasks))
        set_(self, "modules", dict(self.modules))
        set_(self, "variables", tuple(v if isinstance(v, Var) else parse_var(v) for v in self.variables))
        if not self.tasks:
            raise PemarithError("a search needs at least one --task")
        if not self.modules:
            raise PemarithError("a search needs modules: -m NAME=PATH for each module of the expression")
        if not self.variables:
            raise PemarithError("a search needs at least one --var NAME=LO:HI")
        names = [v.name for v in self.variables]
        for name in names:
            if names.count(name) > 1:
                raise PemarithError(f"--var {name} is given twice")
            if name in self.modules:
                raise PemarithError(f"--var {name!r} is also a module name; rename one")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise PemarithError(f"--budget must be a positive integer, got {self.budget!r}")
        if self.sampler not in SAMPLERS:
            raise PemarithError(
                f"unknown --sampler {self.sampler!r}{did_you_mean(self.sampler, SAMPLERS)}"
                f"; choose one of {', '.join(SAMPLERS)}"
            )
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise PemarithError(f"--l1 must be a finite number >= 0, got {self.l1}")
        if self.limit is not None and self.limit < 1:
            raise PemarithError(f"--limit must be at least 1, got {self.limit}")
        if self.rank is not None and self.mode != "exact":
            raise PemarithError("--rank needs --mode exact (factorwise keeps the inputs' rank)")
        if self.sampler == "grid" and math.prod(len(v.grid()) for v in self.variables) > MAX_GRID:
            raise PemarithError(f"the grid has more than {MAX_GRID} points; use larger steps")

    def session_config(self) -> Any:
        """What :class:`~pemarith.hf.inplace.Session` reads (its ``seed`` is the split seed)."""
        return SimpleNamespace(
            model=self.model,
            tasks=self.tasks,
            mode=self.mode,
            rank=self.rank,
            val_split=self.val_split,
            test_split=self.test_split,
            data_dir=self.data_dir,
            seed=self.split_seed,
            limit=self.limit,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            samples=self.samples,
            device=self.device,
            dtype=self.dtype,
        )
