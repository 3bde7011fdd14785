"""Tune the free variable of a composition (lambda) on validation, report the pick on test.

    pemarith sweep "l*a + (1-l)*b" -m a=runs/a -m b=runs/b --model minilm --task sst2 -o sweeps/ab

What happens (the paper, Appendix B-C: lambda on validation over [0, 1] by 0.02):

1. The base model is loaded once and wrapped in PEFT once (:class:`~pemarith.hf.inplace.LiveAdapter`).
2. For each value of the variable, the composition is computed from the adapter files
   (``PEM.iter_tensors``) and copied into the live adapter; the model is evaluated on the
   validation split of every task. No adapter is written to disk, no model is reloaded.
3. ``--search grid`` evaluates every value; ``--search refine`` evaluates every ``coarse``-th
   value, then the fine values between the coarse pick's neighbours (:func:`search`).
4. A selection rule (:mod:`pemarith.hf.select`) picks a value from the validation scores; the
   pick (and the base model, when it was evaluated) is evaluated on the test split.
5. ``results.csv``, ``results.json`` and ``sweep.png`` are written to the output directory.
``merge`` (``--method ties --density 0.5``) merges each value by that method (LoRA: exact, R).

Every finished evaluation is appended to ``records.jsonl`` in the output directory (one JSON
line each), so an interrupted sweep resumes where it stopped: values already evaluated are read
back, not recomputed. The first line fingerprints the sweep (expression, modules' sha256, model,
tasks, mode, ...); resuming a different sweep into the same directory is an error.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PemarithError, did_you_mean
from ..methods import MergeSpec
from .evaluator import Evaluator
from .grid import parse_grid
from .select import SEARCHES, parse_rule, resolve_metric, search
from .sweep_out import write_results
from .sweep_records import RecordCache

Scores = dict[str, float]


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SweepConfig:
    """One sweep. ``modules`` maps the expression's names to adapter directories."""

    expr: str
    modules: Mapping[str, str]
    model: str
    tasks: tuple[str, ...]
    out: str
    var: str = "l"
    grid: str = "0:1:0.02"
    search: str = "grid"
    select: str = "max"
    metrics: tuple[str, ...] = ()
    mode: str = "factorwise"
    rank: int | None = None
    keep: str | None = None
    limit: int | None = None
    coarse: int = 5
    seed: int = 0
    data_dir: str | None = None
    val_split: str = "validation"
    test_split: str | None = "test"
    refs: bool = True
    base: bool | None = None  # None: when the rule needs it or every task is a text task
    restart: bool = False
    batch_size: int = 32
    device: str | None = None  # pemarith.hf.hardware: auto, cpu, cuda, cuda:N, mps (None: cpu)
    dtype: str | None = None  # auto, float32, bfloat16, float16 (None: float32)
    max_tokens: int | None = None  # text tasks: score only this many tokens for perplexity
    samples: int | None = None  # text tasks: generations scored for toxicity
    plot: bool = True
    workers: int = 1  # > 1: evaluate on that many Ray actors (pemarith.hf.sweep_ray)
    ray: str | None = None  # evaluate on Ray: "" starts a local Ray, else a cluster address
    merge: MergeSpec = field(default_factory=MergeSpec)  # the merge method (default linear)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "modules", dict(self.modules))
        if not self.tasks:
            raise PemarithError("a sweep needs at least one --task")
        if not self.modules:
            raise PemarithError("a sweep needs modules: -m NAME=PATH for each name of the expression")
        if not self.var.isidentifier():
            raise PemarithError(f"--var {self.var!r} is not a name")
        if self.var in self.modules:
            raise PemarithError(f"--var {self.var!r} is also a module name; rename one")
        if self.search not in SEARCHES:
            raise PemarithError(f"unknown --search {self.search!r}{did_you_mean(self.search, SEARCHES)}")
        if self.limit is not None and self.limit < 1:
            raise PemarithError(f"--limit must be at least 1, got {self.limit}")
        if self.rank is not None and self.mode != "exact":
            raise PemarithError("--rank needs --mode exact (factorwise keeps the inputs' rank)")
        if self.workers < 1:
            raise PemarithError(f"--workers must be at least 1, got {self.workers}")
        parse_grid(self.grid)
        parse_rule(self.select)

    @property
    def on_ray(self) -> bool:
        """Whether the evaluations run on Ray actors (``--ray``, or ``--workers`` above 1)."""
        return self.ray is not None or self.workers > 1


@dataclass
class SweepResult:
    """What :func:`run_sweep` found; also written to ``results.json``."""

    var: str
    pick: float
    columns: list[str]
    validation: list[tuple[float, Scores]]
    test: Scores | None
    base: dict[str, Scores] = field(default_factory=dict)  # split -> scores
    modules: dict[str, Scores] = field(default_factory=dict)  # name -> validation scores
    evaluations: int = 0
    grid_size: int = 0
    reused: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fmt_scores(scores: Mapping[str, float], columns: Sequence[str]) -> str:
    shown = [c for c in columns if c in scores] or list(scores)[:3]
    return "  ".join(f"{c}={scores[c]:.4g}" for c in shown)


# ----------------------------------------------------------------------------- the sweep


@dataclass
class Prepared:
    """What a sweep is before any model: its grid, rule, parsed expression, the modules it uses
    (checked), ``compose(value)`` and the fingerprint of its records."""

    values: list[float]
    rule: Any
    expression: Any
    used: dict[str, Any]
    compose: Callable[[float], Any]
    fingerprint: dict[str, Any]


def prepare(config: SweepConfig, log: Callable[[str], None] = _log) -> Prepared:
    """Parse and check ``config`` and load its adapters (lazily: headers only); no model."""
    import pemarith
    from pemarith.expr import Expression

    values = parse_grid(config.grid)
    rule = parse_rule(config.select)
    expression = Expression(config.expr)
    free = [n for n in expression.identifiers() if n not in config.modules]
    if config.var not in expression.identifiers():
        hint = did_you_mean(config.var, free) or (
            f"; the expression's free name is --var {free[0]}" if len(free) == 1 else ""
        )
        raise PemarithError(f"--var {config.var!r} does not occur in {config.expr!r}{hint}")
    unbound = [n for n in free if n != config.var]
    if unbound:
        raise PemarithError(
            f"unknown name {unbound[0][:60]!r} in {config.expr[:120]!r}: sweep varies one "
            f"variable (--var {config.var}); give {unbound[0][:60]!r} as a module with "
            f"-m {unbound[0][:60]}=PATH{did_you_mean(unbound[0], list(config.modules))}"
        )
    pems = {n: pemarith.load(p, n) for n, p in config.modules.items()}
    # Unknown names fail here, before any model is loaded.
    terms0 = expression.normal_form(list(pems), {config.var: values[0]})
    used = {n: pems[n] for n in terms0}
    for name in pems:
        if name not in used:
            log(f"note: -m {name} is not used in the expression")
    if config.keep is not None and config.keep not in used:
        raise PemarithError(
            f"--keep {config.keep!r} is not a module of the expression{did_you_mean(config.keep, used)}"
        )

    def compose(value: float) -> Any:  # the expression parsed once; the inputs checked once
        return pemarith.compose(expression, used, config.mode, config.rank, {config.var: value}, config.merge)

    compose(values[0])  # a method without --mode exact --rank R fails now, before any model

    fingerprint = {
        "expr": config.expr,
        "var": config.var,
        "model": config.model,
        "tasks": list(config.tasks),
        "mode": config.mode,
        "rank": config.rank,
        "keep": config.keep,
        "limit": config.limit,
        "seed": config.seed,
        "max_tokens": config.max_tokens,
        "samples": config.samples,
        "modules": {n: p.adapters[n].sha256() for n, p in used.items()},
    }
    if config.merge != MergeSpec():  # linear sweeps keep their earlier records
        fingerprint["merge"] = dataclasses.asdict(config.merge)
    from .hardware import dtype_key

    fingerprint.update(dtype_key(config.device, config.dtype))  # other dtypes, other scores
    from .taskfile import task_digests

    fingerprint.update(task_digests(config.tasks))  # an edited task file: another sweep
    return Prepared(values, rule, expression, used, compose, fingerprint)


def default_session(config: SweepConfig, prepared: Prepared) -> Evaluator:
    """The sweep's :class:`~pemarith.hf.inplace.Session`: ``config.model`` loaded once, lazily
    (a sweep whose records are all cached loads no model); checks the tasks' splits now."""
    from .inplace import Session

    probe = _generic_value(prepared.expression, prepared.used, config.var)
    return Session(config, probe=lambda: prepared.compose(probe))


class Evaluations:
    """How one evaluation ``(what, split, value)`` of a sweep is computed on ``session``:
    ``("value", split, v)`` the composition at ``v``, ``("base", split, None)`` the base model,
    ``("module:NAME", split, None)`` one module alone (``{"error": ...}`` where it cannot be
    evaluated alone, e.g. it has no classifier head of its own). The same object runs in the
    sweep's process or in each Ray actor (:mod:`pemarith.hf.sweep_ray`)."""

    def __init__(
        self,
        config: SweepConfig,
        prepared: Prepared,
        session: Evaluator,
        log: Callable[[str], None] = lambda m: None,
        columns: Sequence[str] = (),
    ):
        self.config, self.prepared, self.session, self.log, self.columns = (
            config,
            prepared,
            session,
            log,
            columns,
        )

    def compute(self, what: str, split: str, value: float | None) -> Scores:
        import pemarith

        config, session = self.config, self.session
        if what == "base":
            return session.evaluate(split, base=True)
        if what.startswith("module:"):
            name = what.removeprefix("module:")
            try:
                session.load(
                    pemarith.compose(name, {name: self.prepared.used[name]}), config.mode, None, None
                )
                return session.evaluate(split)
            except PemarithError as exc:  # e.g. a module with no classifier head of its own
                return {"error": str(exc)}
        assert value is not None
        pem = self.prepared.compose(value)
        t = time.perf_counter()
        session.load(pem, config.mode, config.rank, config.keep)
        t_load = time.perf_counter() - t
        scores = session.evaluate(split)
        self.log(
            f"{config.var}={value:<8g} {split:<10} {_fmt_scores(scores, self.columns)}"
            f"  (write {t_load:.2f} s, {time.perf_counter() - t:.1f} s)"
        )
        return scores


def actor_evaluations(config: SweepConfig) -> Evaluations:
    """The :class:`Evaluations` of one Ray actor: the sweep prepared, its own default session."""
    prepared = prepare(config, log=lambda m: None)
    return Evaluations(config, prepared, default_session(config, prepared))


def run_sweep(
    config: SweepConfig,
    session: Evaluator | None = None,
    log: Callable[[str], None] = _log,
    wrap: Callable[[Evaluator], Evaluator] | None = None,
) -> SweepResult:
    """Run ``config``: grid or refine search on validation, pick by rule, pick on test, files.

    ``session`` evaluates compositions (an :class:`~pemarith.hf.evaluator.Evaluator`; default:
    :func:`default_session`). ``wrap`` wraps that default session (e.g. 4.3's mean-of-tasks
    column).

    With ``config.ray`` or ``config.workers > 1`` the evaluations of each stage (the grid; or
    refine's coarse values, then its fine values; the modules alone) run on ``workers`` Ray
    actors, each loading the model once (:mod:`pemarith.hf.sweep_ray`); this process keeps the
    records, so the result and the records are those of a local run.
    """
    if config.on_ray and (session is not None or wrap is not None):
        raise PemarithError("a sweep on Ray needs the default session (each actor loads the model)")
    from pemarith.expr import format_terms

    t0 = time.perf_counter()
    prepared = prepare(config, log)
    if session is None:  # checks the tasks' splits before anything is written
        session = default_session(config, prepared)
        session = wrap(session) if wrap else session
    cache = RecordCache(config.out, prepared.fingerprint, restart=config.restart)
    columns: list[str] = []
    evaluations = Evaluations(config, prepared, session, log, columns)
    engine = None
    if config.on_ray:
        from .sweep_ray import RaySweep

        engine = RaySweep(config, actor_evaluations, log)
    run = engine.run if engine is not None else None
    try:
        result = _search(config, prepared, session, cache, evaluations, columns, run, log)
    finally:
        if engine is not None:
            engine.close()
    result.reused = cache.reused
    result.seconds = round(time.perf_counter() - t0, 3)
    result.files = write_results(config, result, format_terms(prepared.compose(result.pick).terms))
    return result


def _search(
    config: SweepConfig,
    prepared: Prepared,
    session: Evaluator,
    cache: RecordCache,
    evaluations: Evaluations,
    columns: list[str],
    run: Any,
    log: Callable[[str], None],
) -> SweepResult:
    """The stages of a sweep, each a batch of ``cache.evaluate_many`` (run by ``run``, or here)."""
    values, rule = prepared.values, prepared.rule

    def track(scores: Mapping[str, float]) -> None:
        if columns:
            return
        keys = [k for k, v in scores.items() if isinstance(v, (int, float))]
        wanted = list(config.metrics) or session.primary_metrics(keys)
        # Metrics the rule names are tracked (and plotted) too.
        columns.extend(
            dict.fromkeys(resolve_metric(m, keys) for m in [*wanted, *rule.metric_names(config.var)])
        )
        rule.check(config.var, columns)

    def item(
        what: str, split: str, value: float | None
    ) -> tuple[str, str, float | None, Callable[[], Scores]]:
        return (what, split, value, lambda: evaluations.compute(what, split, value))

    def evaluate_values(values: list[float], split: str) -> list[Scores]:
        found = cache.evaluate_many([item("value", split, v) for v in values], run)
        for scores in found:
            track(scores)
        return found

    def evaluate_value(value: float, split: str) -> Scores:
        return evaluate_values([value], split)[0]

    val, test = config.val_split, config.test_split
    result = SweepResult(config.var, math.nan, columns, [], None, grid_size=len(values))
    want_base = config.base if config.base is not None else (rule.needs_base or session.text_only)
    if want_base:
        (result.base[val],) = cache.evaluate_many([item("base", val, None)], run)
        track(result.base[val])
        log(f"base model  {val:<10} {_fmt_scores(result.base[val], columns)}")

    found = search(
        lambda v: evaluate_value(v, val),
        values,
        rule,
        config.var,
        lambda: columns,
        result.base.get(val),
        config.search,
        config.coarse,
        batch=lambda vs: evaluate_values(vs, val),
    )
    result.pick, result.validation = found.pick, sorted(found.evaluated)
    log(
        f"pick {config.var}={found.pick:g} by {rule.text!r}; {len(found.evaluated)} of "
        f"{len(values)} grid values evaluated ({found.method})"
    )

    if config.refs:
        refs = [item(f"module:{name}", val, None) for name in prepared.used]
        for name, scores in zip(prepared.used, cache.evaluate_many(refs, run)):
            if "error" in scores:
                result.notes.append(f"no reference line for {name!r}: {scores['error']}")
                log(f"note: {result.notes[-1]}")
            else:
                result.modules[name] = scores
    if test:
        result.test = evaluate_value(found.pick, test)
        if want_base:
            (result.base[test],) = cache.evaluate_many([item("base", test, None)], run)
    result.evaluations = len(found.evaluated)
    return result


def _generic_value(expression: Any, pems: Mapping[str, Any], var: str) -> float:
    """A value of ``var`` at which no coefficient vanishes, so the probe has every term."""
    for v in (0.5, 0.37, 0.618, 0.123, 1.7):
        if all(c != 0.0 for c in expression.normal_form(list(pems), {var: v}).values()):
            return v
    return 0.5
