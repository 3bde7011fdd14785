"""Recipes: the paper's settings as TOML files, loaded into frozen dataclasses.

A recipe names a scenario (a function in :data:`pemarith.scenarios.registry.SCENARIOS`), a base
model, tasks, module kinds, seeds, how each kind is trained (``[train.KIND]``, with optional
``[train.KIND.per_task.TASK]`` overrides), how lambda is tuned (``[sweep]``) and the scenario's
own options (``[options]``). Every table is turned into its dataclass with ``Cls(**table)``
after a check that names any unknown key with a did-you-mean, so a typo fails loudly.

Two more keys shape the file, not the recipe:

- ``extends = "other.toml"``: start from that recipe's tables (path relative to this file) and
  override them; used so that the 4.7 analysis trains exactly the modules of 4.2 (the store is
  content-addressed: equal settings are the same directories).
- ``[quick]``: tables merged over the rest when ``--quick`` is asked (tiny sizes for CI).

Example::

    name = "distribution-generalisation"
    scenario = "distribution-generalisation"
    model = "minilm"
    tasks = ["sst2", "rte"]
    methods = ["lora", "ia3", "full"]
    seeds = [0, 1, 2]

    [train.lora]
    lr = 2e-3
    steps = 100

    [sweep]
    grid = "0:1:0.02"
    search = "refine"

    [quick]
    tasks = ["sst2"]
    [quick.train.lora]
    steps = 4
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PemarithError, did_you_mean
from ..hf.train_config import PEFT_TYPES
from .scenario import get_scenario

#: Module kinds a recipe may train: PEFT kinds and full fine-tuning.
METHODS = PEFT_TYPES  # what a recipe trains: train's own names (one name per idea)
#: Where recipe names are looked up (``pemarith reproduce NAME``), in order.
EXPERIMENTS_DIRS = (Path.cwd() / "experiments", Path(__file__).resolve().parents[3] / "experiments")


class RecipeError(PemarithError):
    """A recipe file that cannot be read, or a key or value it must not have."""


def build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """``cls(**table)`` after naming unknown keys (with a did-you-mean) as a :class:`RecipeError`."""
    if not isinstance(table, Mapping):
        raise RecipeError(f"{where}: expected a table, got {type(table).__name__}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in table:
        if key not in known:
            raise RecipeError(
                f"{where}: unknown key {key!r}{did_you_mean(key, known)}; known keys: {', '.join(known)}"
            )
    try:
        return cls(**table)
    except TypeError as e:  # a missing required key
        raise RecipeError(f"{where}: {e}") from None


@dataclass(frozen=True)
class TrainSpec:
    """How one module kind is trained (names as :class:`pemarith.hf.train.TrainConfig`).

    ``per_task`` maps a task name to overrides of these fields for that task only (the paper
    trains MNLI and RTE with different learning rates and steps).
    """

    steps: int | None = None
    epochs: float | None = None
    lr: float = 5e-4
    batch_size: int = 16
    max_length: int = 128
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    model_dropout: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    per_task: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise RecipeError("train: give exactly one of steps and epochs")
        if self.steps is not None and self.steps < 1:
            raise RecipeError(f"train: steps must be >= 1, not {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise RecipeError(f"train: epochs must be > 0, not {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecipeError(f"train: lr must be a positive number, not {self.lr}")
        if self.batch_size < 1 or self.max_length < 4 or self.r < 1:
            raise RecipeError("train: batch_size and r must be >= 1, max_length >= 4")
        per = {}
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "per_task"}
        for task, table in dict(self.per_task).items():
            if isinstance(table, TrainSpec):
                per[task] = table
                continue
            base = dict(own)
            if "steps" in table or "epochs" in table:
                base.pop("steps", None)
                base.pop("epochs", None)
            per[task] = build(TrainSpec, {**base, **table}, f"[train.*.per_task.{task}]")
        object.__setattr__(self, "per_task", per)

    def fields(self) -> dict[str, Any]:
        """The settings as a plain dict (``per_task`` included as dicts)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["per_task"] = {t: s.fields() for t, s in dict(self.per_task).items()}
        return out

    def for_task(self, task: str) -> TrainSpec:
        """These settings with ``task``'s overrides applied."""
        return self.per_task.get(task, self)

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``TrainConfig`` (everything but ``per_task``)."""
        return {k: v for k, v in self.fields().items() if k != "per_task"}


@dataclass(frozen=True)
class SweepSpec:
    """How lambda is tuned: the grid and search of ``pemarith sweep``, evaluation sizes.

    ``limit`` keeps the first N rows of the validation and test splits (None: all).
    """

    grid: str = "0:1:0.02"
    search: str = "refine"
    coarse: int = 5
    select: str = "max"
    var: str = "l"
    batch_size: int = 32
    limit: int | None = None

    def __post_init__(self) -> None:
        from ..hf.grid import parse_grid
        from ..hf.select import SEARCHES, parse_rule

        parse_grid(self.grid)
        parse_rule(self.select)
        if self.search not in SEARCHES:
            raise RecipeError(f"[sweep] search must be one of {', '.join(SEARCHES)}")
        if self.limit is not None and self.limit < 1:
            raise RecipeError(f"[sweep] limit must be >= 1, not {self.limit}")
        if not self.var.isidentifier():
            raise RecipeError(f"[sweep] var {self.var!r} is not a name")


@dataclass(frozen=True)
class Recipe:
    """One reproduction: what to train, compose, tune and report. See the module docstring."""

    name: str
    scenario: str
    model: str
    tasks: tuple[str, ...]
    train: Mapping[str, TrainSpec]
    sweep: SweepSpec
    options: Any
    methods: tuple[str, ...] = ("lora", "ia3", "full")
    seeds: tuple[int, ...] = (0,)
    description: str = ""
    sizes: str = ""  # the sizes in words, for the report
    quick: bool = False
    source: str = ""  # the file it was read from

    def __post_init__(self) -> None:
        from ..hf.tasks import get_task

        object.__setattr__(self, "tasks", tuple(get_task(t).name for t in self.tasks))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.tasks or not self.methods or not self.seeds:
            raise RecipeError(f"recipe {self.name}: tasks, methods and seeds must not be empty")
        for m in self.methods:
            if m not in METHODS:
                raise RecipeError(
                    f"recipe {self.name}: unknown method {m!r}"
                    f"{did_you_mean(m, METHODS)}; use {', '.join(METHODS)}"
                )
            if m not in self.train:
                raise RecipeError(f"recipe {self.name}: method {m} has no [train.{m}] table")
        if len(set(self.seeds)) != len(self.seeds):
            raise RecipeError(f"recipe {self.name}: repeated seeds {list(self.seeds)}")

    def to_json(self) -> dict[str, Any]:
        """The recipe as JSON-able values (for results files)."""
        return {
            "name": self.name,
            "scenario": self.scenario,
            "model": self.model,
            "tasks": list(self.tasks),
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "description": self.description,
            "sizes": self.sizes,
            "quick": self.quick,
            "source": self.source,
            "train": {m: s.fields() for m, s in self.train.items()},
            "sweep": dataclasses.asdict(self.sweep),
            "options": dataclasses.asdict(self.options),
        }


# ----------------------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise RecipeError("reading recipes on Python 3.10 needs tomli: pip install tomli") from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of TOML tables: tables merge key by key, any other value replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _flatten(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's table with ``extends`` resolved (quick tables merged along the chain)."""
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: extends itself ({' -> '.join(str(p) for p in seen)})")
    table = _read_toml(path)
    parent = table.pop("extends", None)
    if parent is None:
        return table
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: extends must be a file name")
    base = _flatten(path.parent / parent, (*seen, path))
    return merge(base, table)


def find_recipe(name: str) -> Path:
    """The recipe file for ``name``: a path, or ``experiments/<name>.toml`` (``-`` as ``_``)."""
    p = Path(name).expanduser()
    if p.suffix == ".toml" or p.is_file():
        if not p.is_file():
            raise RecipeError(f"no recipe file {p}")
        return p
    stem = name.replace("-", "_")
    known: list[str] = []
    for d in EXPERIMENTS_DIRS:
        if (d / f"{stem}.toml").is_file():
            return d / f"{stem}.toml"
        if d.is_dir():
            known += [f.stem.replace("_", "-") for f in sorted(d.glob("*.toml"))]
    known = list(dict.fromkeys(known))
    raise RecipeError(
        f"unknown reproduction {name!r}{did_you_mean(name, known)}; "
        f"known: {', '.join(known) or 'none found'} (or give a recipe .toml path)"
    )


def load_recipe(name_or_path: str | Path, quick: bool = False, **overrides: Any) -> Recipe:
    """Read a recipe (a name from ``experiments/`` or a path), ``[quick]`` merged if asked.

    ``overrides`` replace top-level keys (``seeds``, ``tasks``, ``methods``) after merging;
    None values are ignored.
    """
    path = find_recipe(str(name_or_path))
    table = _flatten(path)
    quick_table = table.pop("quick", {})
    if quick:
        if not quick_table:
            raise RecipeError(f"{path}: no [quick] table")
        table = merge(table, quick_table)
    table.update({k: v for k, v in overrides.items() if v is not None})
    where = str(path)
    for key in ("name", "scenario"):
        if key not in table:
            raise RecipeError(f"{where}: missing key {key!r}")
    scenario = get_scenario(table["scenario"])
    trains = table.pop("train", {})
    if not isinstance(trains, Mapping):
        raise RecipeError(f"{where}: [train] must be a table of [train.KIND] tables")
    for kind in trains:
        if kind not in METHODS:
            raise RecipeError(
                f"{where}: [train.{kind}]: unknown kind{did_you_mean(kind, METHODS)}"
                f"; use {', '.join(METHODS)}"
            )
    train = {k: build(TrainSpec, t, f"{where} [train.{k}]") for k, t in trains.items()}
    sweep = build(SweepSpec, table.pop("sweep", {}), f"{where} [sweep]")
    options = build(scenario.options, table.pop("options", {}), f"{where} [options]")
    table.setdefault("quick", quick)
    table["source"] = where
    return build(Recipe, {**table, "train": train, "sweep": sweep, "options": options}, where)
