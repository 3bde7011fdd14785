"""Arithmetic on fully fine-tuned checkpoints: the paper's FFT reference rows, swept in place.

The paper composes fully fine-tuned models the way it composes modules, on every weight:
``theta = sum_i c_i theta_i`` (for ``l*a + (1-l)*b``: ``l*theta_a + (1-l)*theta_b``, weight
averaging). No rescaling is applied. :class:`FullSession` loads the first checkpoint once as the
live model, keeps each checkpoint's floating-point tensors in memory, and for each composition
writes the weighted sum into the live model's parameters; integer buffers (position ids) are
the first checkpoint's. :func:`run_full_sweep` is :func:`pemarith.hf.sweep.run_sweep` for such
checkpoints, with the same records cache, search, selection rule, plot and ``results.json``
layout (``pick`` with the validation and test scores, ``validation`` points).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PemarithError
from ..fs import write_file


def _state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise PemarithError(f"{path} has no .safetensors weights (a full fine-tuned model dir?)")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


class FullSession:
    """Full checkpoints by name; the live model holds the weighted sum last loaded.

    Same evaluation interface as :class:`pemarith.hf.inplace.Session`: :meth:`evaluate`,
    :meth:`primary_metrics`, :attr:`text_only`.
    """

    def __init__(
        self,
        models: Mapping[str, Path],
        tasks: Sequence[str],
        data_dir: Any = None,
        limit: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
    ):
        from .tasks import get_task

        if not models:
            raise PemarithError("a full-weight composition needs at least one checkpoint")
        self.paths = {n: Path(p) for n, p in models.items()}
        self.tasks = [get_task(t) for t in tasks]
        self.text_only = all(t.kind == "text" for t in self.tasks)
        self.data_dir, self.limit, self.batch_size, self.seed = data_dir, limit, batch_size, seed
        self._model: Any = None
        self._tok: Any = None
        self._states: dict[str, dict[str, Any]] = {}
        self._rows: dict[tuple[str, str], Any] = {}

    def _live(self) -> Any:
        if self._model is None:
            from .evaluate import load_for_eval

            first = next(iter(self.paths.values()))
            self._model, self._tok = load_for_eval(str(first), self.tasks[0], None)
            self._model.eval()
        return self._model

    def _state_of(self, name: str) -> dict[str, Any]:
        if name not in self._states:
            self._states[name] = _state(self.paths[name])
        return self._states[name]

    def load_terms(self, terms: Mapping[str, float], names: Mapping[str, Path] | None = None) -> None:
        """Write ``sum_i c_i theta_i`` (``terms`` = ``{name: c_i}``) into the live model."""
        import torch

        for n, p in (names or {}).items():
            if self.paths.get(n) != Path(p):
                self.paths[n] = Path(p)
                self._states.pop(n, None)
        missing = [n for n in terms if n not in self.paths]
        if missing:
            raise PemarithError(f"no checkpoint named {missing[0]!r}; have {', '.join(self.paths)}")
        model = self._live()
        states = {n: self._state_of(n) for n in terms}
        with torch.no_grad():
            for key, param in model.state_dict().items():
                sources = [(c, s.get(key)) for (n, c), s in zip(terms.items(), states.values())]
                if any(t is None for _, t in sources):
                    # tied weights are saved once (e.g. under another name): leave them
                    continue
                if not param.is_floating_point():
                    param.copy_(sources[0][1])
                    continue
                total = torch.zeros_like(param, dtype=torch.float32)
                for c, t in sources:
                    total.add_(t.to(torch.float32), alpha=float(c))
                param.copy_(total.to(param.dtype))

    def _data(self, task: Any, split: str) -> Any:
        key = (task.name, split)
        if key not in self._rows:
            from .data import load_split

            rows = load_split(task, split, data_dir=self.data_dir, seed=self.seed)
            self._rows[key] = rows[: self.limit] if self.limit is not None else rows
        return self._rows[key]

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        """Numeric scores of the live model on ``split`` of every task (``task.`` prefixed when
        there are several)."""
        from .evaluate import evaluate_loaded
        from .inplace import numeric_scores

        if base:
            raise PemarithError("full-weight sweeps have no base-model reference")
        model = self._live()
        out: dict[str, float] = {}
        for task in self.tasks:
            scores = evaluate_loaded(
                model, self._tok, task, self._data(task, split), batch_size=self.batch_size, seed=self.seed
            )
            out.update(numeric_scores(task, self.tasks, scores))
        return out

    def primary_metrics(self, keys: Sequence[str]) -> list[str]:
        from .inplace import primary_metrics

        return primary_metrics(self.tasks, keys)


def run_full_sweep(
    session: FullSession,
    expr: str,
    out: str | Path,
    var: str = "l",
    grid: str = "0:1:0.02",
    search: str = "grid",
    coarse: int = 5,
    select: str = "max",
    fingerprint: Mapping[str, Any] | None = None,
    val_split: str = "validation",
    test_split: str | None = "test",
    plot: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sweep ``var`` in ``expr`` over full checkpoints: pick on validation, the pick on test.

    Writes ``records.jsonl`` (resumable), ``results.json`` and ``sweep.png`` into ``out``, in the
    layout of :func:`pemarith.hf.sweep.run_sweep`; returns the results dict.
    """
    from ..expr import Expression, format_terms
    from .grid import parse_grid
    from .select import parse_rule
    from .select import search as run_search
    from .sweep_records import RecordCache

    t0 = time.perf_counter()
    out = Path(out)
    values = parse_grid(grid)
    rule = parse_rule(select)
    expression = Expression(expr)
    names = list(session.paths)
    cache = RecordCache(out, {"expr": expr, "var": var, "kind": "full", **dict(fingerprint or {})})
    columns: list[str] = []

    def evaluate_value(value: float, split: str) -> dict[str, float]:
        def compute() -> dict[str, float]:
            terms = expression.normal_form(names, {var: value})
            session.load_terms(terms)
            scores = session.evaluate(split)
            shown = "  ".join(f"{k}={v:.4g}" for k, v in list(scores.items())[:3])
            log(f"{var}={value:<8g} {split:<10} {shown}")
            return scores

        scores = cache.evaluate("value", split, value, compute)
        if not columns:
            keys = [k for k, v in scores.items() if isinstance(v, (int, float))]
            columns.extend(dict.fromkeys([*session.primary_metrics(keys), *rule.metric_names(var)]))
        return scores

    found = run_search(
        lambda v: evaluate_value(v, val_split), values, rule, var, lambda: columns, None, search, coarse
    )
    test = evaluate_value(found.pick, test_split) if test_split else None
    validation = sorted(found.evaluated)
    pick_val = next(s for v, s in validation if v == found.pick)
    files = {"json": str(out / "results.json")}
    if plot:
        from .plot import plot_sweep

        files["plot"] = str(
            plot_sweep(
                out / "sweep.png",
                var,
                validation,
                columns,
                {},
                found.pick,
                title=f"{expr} (full weights, {val_split})",
            )
        )
    result = {
        "expr": expr,
        "var": var,
        "kind": "full",
        "modules": {n: str(p) for n, p in session.paths.items()},
        "select": select,
        "search": search,
        "grid": grid,
        "metrics": columns,
        "pick": {
            var: found.pick,
            "normal_form": format_terms(expression.normal_form(names, {var: found.pick})),
            val_split: pick_val,
            **({test_split: test} if test_split else {}),
        },
        "validation": [{var: v, **s} for v, s in validation],
        "evaluations": len(found.evaluated),
        "grid_size": len(values),
        "reused_from_cache": cache.reused,
        "seconds": round(time.perf_counter() - t0, 3),
        "files": files,
    }
    write_file(
        out / "results.json",
        json.dumps(
            result,
            indent=2,
            default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else str(o),
        )
        + "\n",
    )
    return result
