"""The resumable runner that scenario functions drive: train, sweep, evaluate, each cached.

A scenario function receives a :class:`Context` and asks it for work:

- ``ctx.module(spec)`` trains the module a :class:`ModuleSpec` describes, unless the store has it.
- ``ctx.bench(label, expr, modules, tasks, mode)`` gives a :class:`Bench`: one base model and live
  adapter (loaded only when something is not cached) on which the lambda sweep of ``expr`` runs
  (``bench.sweep()``, :func:`pemarith.hf.sweep.run_sweep`) and single modules are scored
  (``bench.score(name, path, split)``). Full fine-tuned checkpoints get a :class:`FullBench` with
  the same interface (:mod:`pemarith.hf.fullmerge`).
- ``ctx.save(results)`` writes ``results.json``, ``report.md`` and the plots to the output
  directory; scenarios call it after every finished cell, so a partial run has partial tables.

Nothing here imports torch at import time; the hf modules are imported when work is done.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..fs import write_file
from ..hf.evaluator import Evaluator
from ..methods import MergeSpec
from .machine import json_roundtrip, machine, set_threads
from .recipe import Recipe, TrainSpec
from .scenario import get_scenario
from .store import Store, digest, read_json, weights_sha256, write_json

#: Written beside a trained module: the CPU and wall seconds its training took here.
CPU_FILE = "pemarith_timing.json"
#: a module that trains longer than this keeps a resume point (hf.train.resume_file), so a
#: session that ends mid-training loses at most this much of it
CHECKPOINT_SECONDS = 300.0
#: Training data of a module: a skewed subset, both subsets together, or the task's train split.
DATA = ("skew0", "skew1", "both", "train")


def _log(message: str) -> None:
    stamp = _dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ModuleSpec:
    """Everything that determines one trained module (its store key)."""

    model: str
    task: str
    method: str  # lora | ia3 | full
    data: str  # see DATA
    train: TrainSpec
    init_seed: int = 0
    seed: int = 0
    subset_seed: int = 0
    subset_size: int = 1000
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.data not in DATA:
            raise PemarithError(f"module data must be one of {', '.join(DATA)}, not {self.data!r}")

    @property
    def name(self) -> str:
        return f"{self.method}-{self.data}-init{self.init_seed}-seed{self.seed}"

    def key(self) -> dict[str, Any]:
        skew = self.data != "train"
        return {
            "model": self.model, "task": self.task, "method": self.method, "data": self.data,
            "init_seed": self.init_seed, "seed": self.seed, "split_seed": self.split_seed,
            "subset_seed": self.subset_seed if skew else None,
            "subset_size": self.subset_size if skew else None,
            "train": self.train.train_kwargs(),
        }


class Context:
    """What a scenario function runs with: the recipe, the output directory, the store.

    ``trainer`` replaces :func:`pemarith.hf.train.train` (tests of the skip logic only).
    """

    def __init__(self, recipe: Recipe, out: str | Path, store: Store | None = None,
                 data_dir: str | Path | None = None, log: Callable[[str], None] = _log,
                 trainer: Callable[[Any], Path] | None = None, progress: bool = False,
                 plots: bool = True):
        self.recipe = recipe
        self.out = Path(out).expanduser()
        self.store = store or Store(self.out.parent / "store")
        self.data_dir = str(data_dir) if data_dir is not None else None
        self.log = log
        self.trainer = trainer
        self.progress = progress
        self.plots = plots
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}  # module dir -> training seconds (from training.json)
        self.cpu_seconds: dict[str, float] = {}  # module dir -> CPU seconds of its training

    # -- modules -------------------------------------------------------------------------------

    def module_path(self, spec: ModuleSpec) -> Path:
        return self.store.module_dir(spec.model, spec.task, spec.name, spec.key())

    def module(self, spec: ModuleSpec) -> Path:
        """The trained module ``spec`` describes: from the store, or trained now."""
        path = self.module_path(spec)
        if (path / "training.json").is_file():
            self.store.hits += 1
            self.log(f"skip  {spec.task} {spec.name} (trained: {path})")
        else:
            self.log(f"train {spec.task} {spec.name} -> {path}")
            t0 = time.perf_counter()
            trainer = self.trainer
            if trainer is None:
                from ..hf.train import train as trainer
            c0 = time.process_time()
            trainer(self.train_config(spec, path))
            self.store.computed += 1
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # CPU time as well as wall time: on a shared machine the wall time says little
            write_json(path / CPU_FILE, {"cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
                                         "machine": machine()})
            self.log(f"      {spec.task} {spec.name} trained in {wall:.0f} s ({cpu:.0f} s CPU)")
        try:
            self.seconds[str(path)] = float(read_json(path / "training.json").get("seconds", 0.0))
            if (path / CPU_FILE).is_file():
                self.cpu_seconds[str(path)] = float(read_json(path / CPU_FILE)["cpu_seconds"])
        except (OSError, ValueError, KeyError):
            pass
        return path

    def subsets(self, task: str, subset_seed: int, size: int, split_seed: int = 0) -> Any:
        """The Appendix B split of ``task``'s train rows (a :class:`~pemarith.hf.skew.SkewedSplit`)."""
        from ..hf.data import load_split
        from ..hf.skew import skewed_split

        rows = load_split(task, "train", data_dir=self.data_dir, seed=split_seed)
        return skewed_split(rows, seed=subset_seed, size=size)

    def train_config(self, spec: ModuleSpec, path: Path) -> Any:
        from ..hf.train import TrainConfig

        data: dict[str, Any] = {}
        if spec.data in ("skew0", "skew1"):
            data = {"subset": spec.data, "subset_seed": spec.subset_seed,
                    "subset_size": spec.subset_size}
        elif spec.data == "both":
            split = self.subsets(spec.task, spec.subset_seed, spec.subset_size, spec.split_seed)
            data = {"rows": tuple(split.s0 + split.s1)}
        return TrainConfig(model=spec.model, task=spec.task, output_dir=path,
                           peft_type=spec.method, init_seed=spec.init_seed, seed=spec.seed,
                           split_seed=spec.split_seed, data_dir=self.data_dir, overwrite=True,
                           progress=self.progress, checkpoint_seconds=CHECKPOINT_SECONDS,
                           **data, **spec.train.train_kwargs())

    # -- composition and evaluation --------------------------------------------------------------

    def bench(self, label: str, expr: str, modules: Mapping[str, Path], tasks: Sequence[str],
              mode: str = "factorwise", method: str = "lora",
              wrap: Callable[[Any], Any] | None = None, rank: int | None = None,
              merge: MergeSpec | None = None) -> Bench:
        """A :class:`Bench` (PEFT modules) or a :class:`FullBench` (``method == "full"``);
        ``merge`` and ``rank``: how each lambda's composition is merged (TIES, DARE...)."""
        cls = FullBench if method == "full" else Bench
        return cls(self, label, expr, dict(modules), tuple(tasks), mode, wrap, rank, merge)

    # -- results -----------------------------------------------------------------------------------

    def previous_cells(self) -> list[dict[str, Any]]:
        """Cells of an earlier ``results.json`` in the output directory made with the same
        settings (tasks and seeds may differ), so a run on a few tasks keeps the others'."""
        path = self.out / "results.json"
        if not path.is_file():
            return []
        try:
            old = read_json(path)
        except ValueError:
            return []

        def settings(recipe: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in recipe.items() if k not in ("tasks", "seeds", "source")}

        if settings(old.get("recipe", {})) != settings(
                json_roundtrip(self.recipe.to_json())):
            self.log(f"note: {path} was made with other settings; its cells are not kept")
            return []
        return list(old.get("cells", []))

    def save(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write ``results.json``, ``report.md`` and plots to the output directory."""
        results = {**results, "recipe": self.recipe.to_json(),
                   "updated": _dt.datetime.now().isoformat(timespec="seconds"),
                   "machine": machine(), "elapsed_seconds": round(time.perf_counter() - self.started, 1),
                   "store": {"hits": self.store.hits, "computed": self.store.computed}}
        write_json(self.out / "results.json", results)
        publish(results, self.out, plots=self.plots)
        return results


def publish(results: Mapping[str, Any], out: Path, plots: bool = True) -> list[Path]:
    """``report.md`` (and the plots) for ``results`` in ``out``; returns the written files."""
    scenario = get_scenario(results["recipe"]["scenario"])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        written += scenario.plot(results, out)
    text = scenario.render(results)
    write_file(out / "report.md", text)
    written.append(out / "report.md")
    return written


class Bench:
    """One composition of PEFT modules on one base model: its sweep and its modules' scores.

    The base model is loaded (once) only when a sweep or a score is not in the store.
    ``wrap`` wraps the :class:`~pemarith.hf.inplace.Session` (e.g. to add a mean column);
    ``merge`` (default linear) and ``rank`` are the composition's merge method and LoRA rank.
    """

    def __init__(self, ctx: Context, label: str, expr: str, modules: dict[str, Path],
                 tasks: tuple[str, ...], mode: str, wrap: Callable[[Evaluator], Evaluator] | None,
                 rank: int | None = None, merge: MergeSpec | None = None):
        self.ctx, self.label, self.expr, self.modules = ctx, label, expr, modules
        self.tasks, self.mode, self.wrap = tasks, mode, wrap
        self.rank, self.merge = rank, merge or MergeSpec()
        self._session: Any = None
        self._sha = {n: weights_sha256(p) for n, p in modules.items()}
        self.tasks_key = "+".join(tasks)

    def _key(self) -> dict[str, Any]:
        r = self.ctx.recipe
        return {"model": r.model, "expr": self.expr, "tasks": list(self.tasks), "mode": self.mode,
                "sweep": dataclasses.asdict(r.sweep), "modules": self._sha,
                "wrap": getattr(self.wrap, "__name__", None), **self._merge_key()}

    def _merge_key(self) -> dict[str, Any]:
        """The rank and merge method, only where given (earlier store keys stay valid)."""
        key: dict[str, Any] = {} if self.rank is None else {"rank": self.rank}
        if self.merge != MergeSpec():
            key["merge"] = dataclasses.asdict(self.merge)
        return key

    @property
    def sweep_dir(self) -> Path:
        return self.ctx.store.sweep_dir(self.ctx.recipe.model, self.tasks_key, self.label,
                                        self._key())

    def config(self) -> Any:
        from ..hf.sweep import SweepConfig

        s = self.ctx.recipe.sweep
        return SweepConfig(expr=self.expr, modules={n: str(p) for n, p in self.modules.items()},
                           model=self.ctx.recipe.model, tasks=self.tasks, out=str(self.sweep_dir),
                           var=s.var, grid=s.grid, search=s.search, coarse=s.coarse,
                           select=s.select, mode=self.mode, rank=self.rank, merge=self.merge,
                           limit=s.limit,
                           data_dir=self.ctx.data_dir, refs=False, base=False,
                           batch_size=s.batch_size, plot=self.ctx.plots)

    @property
    def session(self) -> Any:
        if self._session is None:
            import pemarith

            from ..hf.inplace import Session

            cfg = self.config()
            pems = {n: pemarith.load(p, n) for n, p in self.modules.items()}
            var = cfg.var
            session = Session(cfg, probe=lambda: pemarith.compose(
                self.expr, pems, mode=self.mode, rank=self.rank, method=self.merge, **{var: 0.5}))
            self._session = self.wrap(session) if self.wrap else session
        return self._session

    def sweep(self) -> dict[str, Any]:
        """The sweep's ``results.json`` (lambda picked on validation, the pick on test)."""
        d = self.sweep_dir
        if (d / "results.json").is_file():
            self.ctx.store.hits += 1
            self.ctx.log(f"skip  sweep {self.label} on {self.tasks_key} (done: {d})")
            return read_json(d / "results.json")
        from ..hf.sweep import run_sweep

        self.ctx.log(f"sweep {self.label} {self.expr!r} ({self.mode}) on {self.tasks_key} -> {d}")
        t0 = time.perf_counter()
        run_sweep(self.config(), session=self.session, log=self.ctx.log)
        self.ctx.store.computed += 1
        self.ctx.log(f"      sweep {self.label} done in {time.perf_counter() - t0:.0f} s")
        return read_json(d / "results.json")

    def _score_key(self, path: Path, split: str) -> dict[str, Any]:
        r = self.ctx.recipe
        return {"model": r.model, "tasks": list(self.tasks), "split": split,
                "limit": r.sweep.limit, "batch_size": r.sweep.batch_size,
                "weights": weights_sha256(path), "wrap": getattr(self.wrap, "__name__", None)}

    def score(self, name: str, path: Path, split: str) -> dict[str, float]:
        """Scores of one module alone on ``split`` of the bench's tasks (cached)."""
        file = self.ctx.store.eval_file(self.ctx.recipe.model, self.tasks_key,
                                        f"{name}-{split}", self._score_key(path, split))

        def compute() -> dict[str, Any]:
            import pemarith

            self.ctx.log(f"eval  {name} on {self.tasks_key} {split}")
            t0 = time.perf_counter()
            self.session.load(pemarith.compose(name, {name: pemarith.load(path, name)}),
                              self.mode, None, None)
            scores = self.session.evaluate(split)
            return {"scores": scores, "module": str(path), "seconds": round(time.perf_counter() - t0, 2)}

        return self.ctx.store.cached_json(file, compute)["scores"]

    def predictions(self, name: str, expr: str, lam: float | None, split: str) -> dict[str, Any]:
        """Per-row predictions of ``expr`` (a module's name, or the bench's expression at
        ``lam``) on ``split`` of every task: ``{task: {"predictions", "labels"}}`` (cached)."""
        var = self.ctx.recipe.sweep.var
        key = {**self._score_key(next(iter(self.modules.values())), split), "weights": self._sha,
               "expr": expr, var: lam, "mode": self.mode, "what": "predictions",
               **(self._merge_key() if name == "merged" else {})}
        file = self.ctx.store.eval_file(self.ctx.recipe.model, self.tasks_key,
                                        f"{name}-{split}-predictions", key)

        def compute() -> dict[str, Any]:
            import pemarith
            from pemarith.expr import Expression

            self.ctx.log(f"eval  {name} on {self.tasks_key} {split} (per-row predictions)")
            names = Expression(expr).identifiers()
            used = {n: pemarith.load(p, n) for n, p in self.modules.items() if n in names}
            merged = name == "merged"
            pem = pemarith.compose(expr, used, mode=self.mode,
                                   variables={var: lam} if lam is not None else None,
                                   rank=self.rank if merged else None,
                                   method=self.merge if merged else "linear")
            self.session.load(pem, self.mode, self.rank if merged else None, None)
            return self.session.predict(split)  # a Predictor (a wrapper's: its inner one's)

        return self.ctx.store.cached_json(file, compute)


class FullBench(Bench):
    """:class:`Bench` for fully fine-tuned checkpoints: weighted sums of all their weights."""

    @property
    def session(self) -> Any:
        if self._session is None:
            from ..hf.fullmerge import FullSession

            s = self.ctx.recipe.sweep
            session = FullSession(self.modules, self.tasks, data_dir=self.ctx.data_dir,
                                  limit=s.limit, batch_size=s.batch_size)
            self._session = self.wrap(session) if self.wrap else session
        return self._session

    def sweep(self) -> dict[str, Any]:
        d = self.sweep_dir
        if (d / "results.json").is_file():
            self.ctx.store.hits += 1
            self.ctx.log(f"skip  sweep {self.label} on {self.tasks_key} (done: {d})")
            return read_json(d / "results.json")
        from ..hf.fullmerge import run_full_sweep

        s = self.ctx.recipe.sweep
        self.ctx.log(f"sweep {self.label} {self.expr!r} (full weights) on {self.tasks_key} -> {d}")
        t0 = time.perf_counter()
        run_full_sweep(self.session, self.expr, d, var=s.var, grid=s.grid, search=s.search,
                       coarse=s.coarse, select=s.select, fingerprint=self._key(),
                       plot=self.ctx.plots, log=self.ctx.log)
        self.ctx.store.computed += 1
        self.ctx.log(f"      sweep {self.label} done in {time.perf_counter() - t0:.0f} s")
        return read_json(d / "results.json")

    def score(self, name: str, path: Path, split: str) -> dict[str, float]:
        file = self.ctx.store.eval_file(self.ctx.recipe.model, self.tasks_key,
                                        f"{name}-{split}", self._score_key(path, split))

        def compute() -> dict[str, Any]:
            self.ctx.log(f"eval  {name} (full model) on {self.tasks_key} {split}")
            t0 = time.perf_counter()
            self.session.load_terms({name: 1.0}, names={name: path})
            scores = self.session.evaluate(split)
            return {"scores": scores, "module": str(path), "seconds": round(time.perf_counter() - t0, 2)}

        return self.ctx.store.cached_json(file, compute)["scores"]


__all__ = [
    "DATA",
    "Bench",
    "Context",
    "FullBench",
    "ModuleSpec",
    "digest",
    "machine",
    "publish",
    "set_threads",
]
