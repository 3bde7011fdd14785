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
    distributed: bool = False  # join the workers sharing ``out`` (pemarith.hf.distributed)
    worker: str | None = None  # this worker's name (default HOST-PID)
    claim_timeout: float = 3600.0  # a claim older than this is taken over
    poll: float = 2.0  # seconds between looks at the other workers' records
    workers: int = 1  # > 1: start workers - 1 peers on this machine, and be the last one

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
        if self.workers > 1 and self.restart:
            raise PemarithError("--restart cannot be combined with --workers: restart once, then add workers")
        parse_grid(self.grid)
        parse_rule(self.select)


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


def run_sweep(
    config: SweepConfig,
    session: Evaluator | None = None,
    log: Callable[[str], None] = _log,
    wrap: Callable[[Evaluator], Evaluator] | None = None,
) -> SweepResult:
    """Run ``config``: grid or refine search on validation, pick by rule, pick on test, files.

    ``session`` evaluates compositions (an :class:`~pemarith.hf.evaluator.Evaluator`; default: a :class:`~pemarith.hf.inplace.Session` that
    loads ``config.model`` once, lazily, so a sweep whose records are all cached loads no model).
    ``wrap`` wraps that default session (e.g. 4.3's mean-of-tasks column).

    ``config.workers > 1`` starts that many workers in all on this machine, this process being
    one; ``config.distributed`` joins workers that share ``config.out`` (see
    :mod:`pemarith.hf.distributed`). Either way every worker returns the same result.
    """
    if config.workers > 1:
        if session is not None or wrap is not None:
            raise PemarithError("workers > 1 needs the default session (each worker loads the model)")
        from .distributed import finish_local_workers, start_local_workers

        procs, spec = start_local_workers(config, log)
        ok = False
        try:
            result = run_sweep(dataclasses.replace(config, workers=1, distributed=True), log=log)
            ok = True
        finally:
            finish_local_workers(procs, spec, log, stop=not ok)
        return result

    import pemarith
    from pemarith.expr import Expression, format_terms

    t0 = time.perf_counter()
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
        return pemarith.compose(
            expression, used, mode=config.mode, rank=config.rank, variables={config.var: value}
        )

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
    from .hardware import dtype_key

    fingerprint.update(dtype_key(config.device, config.dtype))  # other dtypes, other scores
    from .taskfile import task_digests

    fingerprint.update(task_digests(config.tasks))  # an edited task file: another sweep
    if session is None:  # checks the tasks' splits before anything is written
        from .inplace import Session

        session = Session(config, probe=lambda: compose(_generic_value(expression, used, config.var)))
        session = wrap(session) if wrap else session
    worker = None
    if config.distributed:
        from .distributed import default_worker

        worker = config.worker or default_worker()
        log_plain = log

        def log(message: str) -> None:
            log_plain(f"[{worker}] {message}")

    cache = RecordCache(
        config.out,
        fingerprint,
        restart=config.restart,
        worker=worker,
        claim_timeout=config.claim_timeout,
        poll=config.poll,
        log=log,
    )

    columns: list[str] = []

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

    def value_item(value: float, split: str) -> tuple[str, str, float, Callable[[], Scores]]:
        def compute() -> Scores:
            pem = compose(value)
            t = time.perf_counter()
            session.load(pem, config.mode, config.rank, config.keep)
            t_load = time.perf_counter() - t
            scores = session.evaluate(split)
            log(
                f"{config.var}={value:<8g} {split:<10} {_fmt_scores(scores, columns)}"
                f"  (write {t_load:.2f} s, {time.perf_counter() - t:.1f} s)"
            )
            return scores

        return ("value", split, value, compute)

    def evaluate_values(values: list[float], split: str) -> list[Scores]:
        found = cache.evaluate_many([value_item(v, split) for v in values])
        for scores in found:
            track(scores)
        return found

    def evaluate_value(value: float, split: str) -> Scores:
        return evaluate_values([value], split)[0]

    val, test = config.val_split, config.test_split
    result = SweepResult(config.var, math.nan, columns, [], None, grid_size=len(values))
    want_base = config.base if config.base is not None else (rule.needs_base or session.text_only)
    if want_base:
        result.base[val] = cache.evaluate("base", val, None, lambda: session.evaluate(val, base=True))
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
        refs = []
        for name in used:

            def compute_ref(name: str = name) -> Scores:
                try:
                    session.load(pemarith.compose(name, {name: used[name]}), config.mode, None, None)
                    return session.evaluate(val)
                except PemarithError as exc:  # e.g. a module with no classifier head of its own
                    return {"error": str(exc)}

            refs.append((f"module:{name}", val, None, compute_ref))
        for name, scores in zip(used, cache.evaluate_many(refs)):
            if "error" in scores:
                result.notes.append(f"no reference line for {name!r}: {scores['error']}")
                log(f"note: {result.notes[-1]}")
            else:
                result.modules[name] = scores
    if test:
        result.test = evaluate_value(found.pick, test)
        if want_base:
            result.base[test] = cache.evaluate("base", test, None, lambda: session.evaluate(test, base=True))
    result.evaluations = len(found.evaluated)
    result.reused = cache.reused
    result.seconds = round(time.perf_counter() - t0, 3)

    result.files = write_results(config, result, format_terms(compose(found.pick).terms))
    return result


def _generic_value(expression: Any, pems: Mapping[str, Any], var: str) -> float:
    """A value of ``var`` at which no coefficient vanishes, so the probe has every term."""
    for v in (0.5, 0.37, 0.618, 0.123, 1.7):
        if all(c != 0.0 for c in expression.normal_form(list(pems), {var: v}).values()):
            return v
    return 0.5
