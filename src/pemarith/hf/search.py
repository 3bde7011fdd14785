"""Search one coefficient per module with Optuna: ``pemarith search``.

    pemarith search "a*x + b*y + c*z" -m x=X -m y=Y -m z=Z --model minilm --task qnli \\
        --var a=0:1.5 --var b=0:1.5 --var c=0:1.5 --budget 40 -o search/xyz

``sweep`` walks one variable over a grid; ``search`` gives every free variable of the expression
a range (``--var NAME=LO:HI``, or ``LO:HI:STEP`` for a stepped range, which ``--sampler grid``
needs) and lets an Optuna sampler (TPE by default, CMA-ES, random, grid) choose ``--budget``
points by its ask/tell interface. The loop:

1. the base model is loaded once (:class:`~pemarith.hf.inplace.Session`, as ``sweep``);
2. ``study.ask()`` proposes the variables; the composition at those values is written into the
   live adapter in place and evaluated on the validation split of every task;
3. ``study.tell(trial, objective)`` with ``objective = metric -/+ W * mean_j |v_j|`` (``--l1 W``,
   LoraHub's penalty: subtracted from a metric that is maximised, added to one minimised);
   ``--objective loss`` minimises the validation loss (:mod:`pemarith.hf.search_loss`);
4. after ``budget`` trials the best trial (best objective; the earliest on ties) is evaluated
   on the test split.

Every evaluation is appended to ``DIR/records.jsonl`` before it is told, keyed by the rounded
values of the variables. A rerun replays the study from the start with the same seeded sampler:
the sampler proposes the same points, which are read back from the records, so an interrupted
search resumes where it stopped, evaluates nothing twice, and ends as an uninterrupted one would.
The first line fingerprints the search (expression, modules' sha256, model, tasks, variables,
sampler, seed, objective, ...); the budget is not in it, so a rerun may extend the budget.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PemarithError, did_you_mean
from ..methods import MergeSpec
from .hardware import dtype_key
from .search_config import MINIMISED, SearchConfig, Var
from .search_records import SearchRecords, params_key
from .select import resolve_metric
from .taskfile import task_digests

Scores = dict[str, float]


@dataclass
class Trial:
    number: int
    params: dict[str, float]
    scores: Scores
    objective: float
    seconds: float


@dataclass
class SearchResult:
    """What :func:`run_search` found; also written to ``results.json``."""

    names: list[str]
    metric: str
    direction: str
    trials: list[Trial]
    best: Trial
    test: Scores | None = None
    columns: list[str] = field(default_factory=list)
    evaluations: int = 0  # computed in this run
    reused: int = 0  # read back from the records
    seconds: float = 0.0
    engine: str = "local"
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def direction_of(metric: str) -> str:
    return "minimize" if metric.split(".")[-1] in MINIMISED else "maximize"


def objective_value(score: float, params: Mapping[str, float], l1: float, direction: str) -> float:
    """``score - l1 * mean|v|`` for a maximised metric, ``score + l1 * mean|v|`` for a minimised one."""
    penalty = l1 * sum(abs(v) for v in params.values()) / max(len(params), 1)
    return score + penalty if direction == "minimize" else score - penalty


def make_sampler(config: SearchConfig) -> Any:
    import optuna

    s = optuna.samplers
    if config.sampler in ("grid", "random"):  # grid: the points are enqueued (grid_points)
        return s.RandomSampler(seed=config.seed)
    if config.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CMA-ES sampler needs it)
        except ImportError:
            raise PemarithError(
                "--sampler cmaes needs the cmaes package: pip install 'pemarith[search]'"
            ) from None
        return s.CmaEsSampler(seed=config.seed, warn_independent_sampling=False)
    return s.TPESampler(seed=config.seed)


def grid_points(config: SearchConfig) -> list[dict[str, float]]:
    """Every point of the variables' grids, in an order shuffled by ``config.seed`` (as Optuna's
    GridSampler does, so that a budget smaller than the grid spreads over it). They are enqueued
    one at a time (``study.enqueue_trial``): Optuna's GridSampler stops the study from inside
    ``tell``, which the ask/tell interface does not allow."""
    import itertools

    import numpy as np

    grids = [v.grid() for v in config.variables]
    points = [dict(zip((v.name for v in config.variables), p)) for p in itertools.product(*grids)]
    order = np.random.default_rng(config.seed).permutation(len(points))
    return [points[i] for i in order]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise PemarithError("`pemarith search` needs Optuna: pip install 'pemarith[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class Prepared:
    """A checked search: the modules the expression uses, a point at which every term is present
    (it shapes the live adapter), and ``compose(params)`` -> the composition at ``params``."""

    used: dict[str, Any]
    probe: dict[str, float]
    config: SearchConfig

    @functools.cached_property
    def expression(self) -> Any:
        """The expression, parsed once for every trial."""
        from ..expr import Expression

        return Expression(self.config.expr)

    def compose(self, params: Mapping[str, float]) -> Any:
        import pemarith

        c = self.config
        return pemarith.compose(
            self.expression, self.used, mode=c.mode, rank=c.rank, variables=dict(params), method=c.merge
        )


def prepare(config: SearchConfig, log: Callable[[str], None] = _log) -> Prepared:
    """Check ``config`` against its expression and modules (no model is loaded)."""
    import pemarith
    from pemarith.expr import Expression

    names = [v.name for v in config.variables]
    expression = Expression(config.expr)
    present = expression.identifiers()
    free = [n for n in present if n not in config.modules]
    for name in names:
        if name not in present:
            raise PemarithError(
                f"--var {name!r} does not occur in {config.expr[:120]!r}{did_you_mean(name, free)}"
            )
    unbound = [n for n in free if n not in names]
    if unbound:
        n = unbound[0][:60]
        raise PemarithError(
            f"unknown name {n!r} in {config.expr[:120]!r}: give it a range with "
            f"--var {n}=LO:HI, or make it a module with -m {n}=PATH"
            f"{did_you_mean(unbound[0], list(config.modules))}"
        )
    pems = {n: pemarith.load(p, n) for n, p in config.modules.items()}
    probe = _generic_params(expression, pems, config.variables)
    used = {n: pems[n] for n in expression.normal_form(list(pems), probe)}
    for name in pems:
        if name not in used:
            log(f"note: -m {name} is not used in the expression")
    if config.keep is not None and config.keep not in used:
        raise PemarithError(
            f"--keep {config.keep!r} is not a module of the expression{did_you_mean(config.keep, used)}"
        )
    prepared = Prepared(used, probe, config)
    prepared.compose(probe)  # a method without --mode exact --rank R fails now, before any model
    return prepared


def default_session(config: SearchConfig, prepared: Prepared) -> Any:
    """The sweep's :class:`~pemarith.hf.inplace.Session` (the model loaded once, on first use;
    it checks the tasks' splits now), with the loss added for ``--objective loss``."""
    from .inplace import Session

    session = Session(config.session_config(), probe=lambda: prepared.compose(prepared.probe))
    if config.objective == "loss":
        from .search_loss import LossSession

        session = LossSession(session)
    return session


def run_search(
    config: SearchConfig,
    session: Any = None,
    log: Callable[[str], None] = _log,
    engine: Callable[[SearchConfig, Prepared], Any] | None = None,
) -> SearchResult:
    """Run ``config``; see the module docstring. ``session`` evaluates compositions (default:
    :func:`default_session`, which loads the model once, lazily, so a search whose evaluations
    are all recorded loads no model). ``engine(config, prepared)`` gives another evaluator of
    batches of points (:class:`pemarith.hf.search_ray.RayEvaluator`: Ray actors); it is started
    after every check and closed at the end."""
    optuna = _optuna()
    t0 = time.perf_counter()
    names = [v.name for v in config.variables]
    prepared = prepare(config, log)
    used = prepared.used
    fingerprint = {
        "expr": config.expr,
        "model": config.model,
        "tasks": list(config.tasks),
        "variables": [[v.name, v.lo, v.hi, v.step] for v in config.variables],
        "sampler": config.sampler,
        "seed": config.seed,
        "objective": config.objective,
        "l1": config.l1,
        "mode": config.mode,
        "rank": config.rank,
        "keep": config.keep,
        "limit": config.limit,
        "split_seed": config.split_seed,
        "max_tokens": config.max_tokens,
        "samples": config.samples,
        "modules": {n: p.adapters[n].sha256() for n, p in used.items()},
        **dtype_key(config.device, config.dtype),
        **task_digests(config.tasks),
    }
    if config.merge != MergeSpec():  # linear searches keep their earlier records
        fingerprint["merge"] = dataclasses.asdict(config.merge)
    if engine is None and session is None:
        session = default_session(config, prepared)
    records = SearchRecords(config.out, fingerprint, restart=config.restart)
    evaluator = engine(config, prepared) if engine else LocalEvaluator(session, prepared.compose, config)
    try:
        return _run(config, names, records, evaluator, optuna, log, t0)
    finally:
        getattr(evaluator, "close", lambda: None)()


def _run(
    config: SearchConfig,
    names: list[str],
    records: SearchRecords,
    evaluator: Any,
    optuna: Any,
    log: Callable[[str], None],
    t0: float,
) -> SearchResult:
    budget = config.budget
    notes: list[str] = []
    grid = grid_points(config) if config.sampler == "grid" else []
    if grid:
        size = len(grid)
        if budget > size:
            notes.append(f"--budget {budget} is more than the grid's {size} points: every point once")
            log(f"note: {notes[-1]}")
            budget = size

    metric: list[str] = []  # resolved on the first scores
    counts = {"evaluated": 0, "reused": 0}

    def evaluate(points: Sequence[Mapping[str, float]], split: str) -> list[dict[str, Any]]:
        """Records of ``points`` on ``split``: read back, or evaluated (in one batch) and recorded."""
        todo = [p for p in dict.fromkeys(params_key(p) for p in points) if (p, split) not in records.records]
        missing = [next(p for p in points if params_key(p) == k) for k in todo]
        counts["reused"] += len(points) - len(missing)
        for params, (scores, seconds) in zip(missing, evaluator.evaluate(missing, split) if missing else []):
            records.add(params, split, scores, seconds)
            counts["evaluated"] += 1
        return [records.get(p, split) for p in points]

    def score_of(scores: Mapping[str, float]) -> float:
        if not metric:
            keys = [k for k, v in scores.items() if isinstance(v, (int, float))]
            wanted = config.objective or (evaluator.primary_metrics(keys) or keys)[0]
            metric.append(resolve_metric(wanted, keys))
        return float(scores[metric[0]])

    dists = {
        v.name: optuna.distributions.FloatDistribution(
            v.lo, v.hi, step=None if config.sampler == "grid" else v.step
        )
        for v in config.variables
    }
    study = None
    trials: list[Trial] = []
    asks = [0]  # trials asked of the current study

    def ask() -> Any:
        if grid:
            study.enqueue_trial(grid[asks[0]])
        asks[0] += 1
        return study.ask(dists)

    while len(trials) < budget:
        k = min(evaluator.workers, budget - len(trials))
        asked = []
        if study is None:  # without --objective the direction is known once a point is scored
            direction = direction_of(config.objective) if config.objective else None
            study = optuna.create_study(direction=direction or "maximize", sampler=make_sampler(config))
            if direction is None:
                asked = [ask()]
                rec = evaluate([_params(asked[0], names)], config.val_split)[0]
                score_of(rec["scores"])
                if direction_of(metric[0]) == "minimize":  # start again, minimising
                    study = optuna.create_study(direction="minimize", sampler=make_sampler(config))
                    asked, asks[0] = [], 0
        asked += [ask() for _ in range(k - len(asked))]
        points = [_params(t, names) for t in asked]
        for trial, params, rec in zip(asked, points, evaluate(points, config.val_split)):
            value = objective_value(score_of(rec["scores"]), params, config.l1, study.direction.name.lower())
            study.tell(trial, value)
            trials.append(Trial(len(trials), params, dict(rec["scores"]), value, rec["seconds"]))
            shown = " ".join(f"{n}={params[n]:.4g}" for n in names)
            log(
                f"trial {trials[-1].number:<4} {shown}  {metric[0]}={rec['scores'][metric[0]]:.4g}"
                f"  objective={value:.4g}  ({rec['seconds']:.2f} s)"
            )
    direction = study.direction.name.lower()
    sign = -1.0 if direction == "minimize" else 1.0
    best = max(trials, key=lambda t: (sign * t.objective, -t.number))
    result = SearchResult(names, metric[0], direction, trials, best, engine=evaluator.engine, notes=notes)
    if config.test_split:
        result.test = dict(evaluate([best.params], config.test_split)[0]["scores"])
    keys = list(dict.fromkeys(k for t in trials for k in t.scores))
    result.columns = [metric[0], *(k for k in keys if k != metric[0])]
    result.evaluations, result.reused = counts["evaluated"], counts["reused"]
    result.seconds = round(time.perf_counter() - t0, 3)
    from .search_out import write_outputs

    result.files = write_outputs(config, result)
    return result


def _params(trial: Any, names: Sequence[str]) -> dict[str, float]:
    return {n: round(float(trial.params[n]), 10) for n in names}


def _generic_params(expression: Any, pems: Mapping[str, Any], variables: Sequence[Var]) -> dict[str, float]:
    """Values in the ranges at which no coefficient vanishes, so the probe has every term."""
    for f in (0.37, 0.618, 0.123, 0.5, 0.91):
        params = {v.name: v.lo + f * (v.hi - v.lo) for v in variables}
        if all(c != 0.0 for c in expression.normal_form(list(pems), params).values()):
            return params
    return params


class LocalEvaluator:
    """Evaluates points one after another in this process, on one :class:`Session`."""

    engine = "local"
    workers = 1

    def __init__(self, session: Any, compose: Callable[[Mapping[str, float]], Any], config: SearchConfig):
        self.session, self.compose, self.config = session, compose, config

    def primary_metrics(self, keys: Sequence[str]) -> list[str]:
        return self.session.primary_metrics(keys)

    def evaluate(self, points: Sequence[Mapping[str, float]], split: str) -> list[tuple[Scores, float]]:
        out = []
        for params in points:
            t = time.perf_counter()
            self.session.load(self.compose(params), self.config.mode, self.config.rank, self.config.keep)
            out.append((self.session.evaluate(split), time.perf_counter() - t))
        return out
