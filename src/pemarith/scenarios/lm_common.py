"""Pieces shared by the causal-LM settings (4.4 unlearning, 4.5 domain transfer, 4.6 detox).

- :func:`rows_module`: a module trained on explicit rows (text chunks, chat texts), cached in the
  store like :meth:`~.runner.Context.module` (whose :class:`~.runner.ModuleSpec` only knows a
  task's own splits and the skewed subsets); optionally continued from another adapter.
- :func:`chunk_ids`: Appendix B's "amalgamate all textual segments, parse them into 128-token
  fragments" (what :func:`pemarith.hf.features.lm_features` does to LM training rows: texts
  joined by EOS, cut into ``max_length`` blocks); used to count the fragments.
- :func:`eval_key`: the store key of a cached evaluation of one adapter.

Nothing here imports torch at import time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .recipe import TrainSpec
from .runner import CHECKPOINT_SECONDS, CPU_FILE, Context, machine
from .store import read_json, weights_sha256, write_json


class LiveLM:
    """Base of the causal-LM sweep sessions: the recipe's model, loaded lazily and once, with one
    live adapter that :meth:`load` overwrites in place (:class:`pemarith.hf.inplace.LiveAdapter`)."""

    def __init__(self, ctx: Context, probe_config: dict[str, Any]):
        self.ctx, self.probe_config = ctx, probe_config
        self._live: Any = None
        self._tok: Any = None

    @property
    def live(self) -> Any:
        if self._live is None:
            from ..hf.inplace import LiveAdapter
            from ..hf.models import load_causal_lm

            model, self._tok = load_causal_lm(self.ctx.recipe.model)
            self._live = LiveAdapter(model, self.probe_config)
        return self._live

    def load(self, pem: Any, mode: str, rank: int | None, keep: str | None) -> None:
        self.live.load(pem, mode, rank, keep)


def rows_module(
    ctx: Context,
    *,
    task: str,
    name: str,
    method: str,
    spec: TrainSpec,
    rows: Sequence[Mapping[str, Any]],
    seed: int,
    objective: str = "lm",
    init: Path | None = None,
    describe: str = "",
) -> Path:
    """The module trained on ``rows`` (from the store, or trained now).

    ``init``: an adapter directory to continue training from (``TrainConfig.init_adapter``).
    The store key holds the model, task, kind, training settings, the rows' sha256, the objective
    and the init adapter's weights, so equal settings share one directory.
    """
    from ..hf.train import rows_sha256

    r = ctx.recipe
    rows = [dict(x) for x in rows]
    key = {
        "model": r.model,
        "task": task,
        "method": method,
        "name": name,
        "seed": seed,
        "objective": objective,
        "rows": rows_sha256(rows),
        "n_rows": len(rows),
        "train": spec.train_kwargs(),
        "init": weights_sha256(init) if init is not None else None,
    }
    path = ctx.store.module_dir(r.model, task, f"{method}-{name}-seed{seed}", key)
    if (path / "training.json").is_file():
        ctx.store.hits += 1
        ctx.log(f"skip  {task} {method}-{name} (trained: {path})")
    else:
        from ..hf.train import TrainConfig

        ctx.log(f"train {task} {method}-{name} on {len(rows)} rows {describe}-> {path}")
        cfg = TrainConfig(
            model=r.model,
            task=task,
            output_dir=path,
            peft_type=method,
            init_seed=seed,
            seed=seed,
            data_dir=ctx.data_dir,
            overwrite=True,
            progress=ctx.progress,
            rows=tuple(rows),
            objective=objective,
            init_adapter=init,
            checkpoint_seconds=CHECKPOINT_SECONDS,
            **spec.train_kwargs(),
        )
        t0, c0 = time.perf_counter(), time.process_time()
        from ..hf.train import train

        (ctx.trainer or train)(cfg)
        ctx.store.computed += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        write_json(
            path / CPU_FILE,
            {"cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1), "machine": machine()},
        )
        ctx.log(f"      {task} {method}-{name} trained in {wall:.0f} s ({cpu:.0f} s CPU)")
    record(ctx, path)
    return path


def record(ctx: Context, path: Path) -> None:
    """Note a module's training wall and CPU seconds in ``ctx`` (for the timing tables)."""
    try:
        ctx.seconds[str(path)] = float(read_json(path / "training.json").get("seconds", 0.0))
        if (path / CPU_FILE).is_file():
            ctx.cpu_seconds[str(path)] = float(read_json(path / CPU_FILE)["cpu_seconds"])
    except (OSError, ValueError, KeyError):
        pass


def train_steps(path: Path) -> int | None:
    """Optimiser steps a module was trained with (from its ``training.json``)."""
    try:
        return int(read_json(Path(path) / "training.json")["steps"])
    except (OSError, ValueError, KeyError):
        return None


def chunk_ids(ids: Sequence[int], size: int, min_len: int = 2) -> list[list[int]]:
    """``ids`` cut into consecutive pieces of ``size`` tokens (a last piece shorter than
    ``min_len`` is dropped), as :func:`pemarith.hf.features.lm_features` cuts its stream."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, not {size}")
    pieces = [list(ids[i : i + size]) for i in range(0, len(ids), size)]
    return [p for p in pieces if len(p) >= min_len]


def eval_key(ctx: Context, what: str, adapters: Mapping[str, Path], **settings: Any) -> dict[str, Any]:
    """The store key of one evaluation: model, what, the adapters' weights, the settings."""
    return {
        "model": ctx.recipe.model,
        "what": what,
        "weights": {n: weights_sha256(p) for n, p in adapters.items()},
        **settings,
    }
