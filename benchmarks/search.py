"""Benchmark: the per-trial overhead of ``pemarith search`` against its evaluation time.

Runs ``a*x + b*y`` with ``--sampler random`` for ``--budget`` trials on SST-2 validation
(``--limit`` rows) with two LoRA modules of the model, three ways:

- local: :func:`pemarith.hf.search.run_search` in this process (what ``pemarith search`` runs);
  the time inside ``evaluate_loaded`` (the model's forward passes and the metrics) is measured,
  so a trial splits into evaluating and everything else (Optuna's ask/tell, composing from the
  adapter files, writing in place, recording);
- Ray, 1 worker and 2 workers (``--ray``; skipped without Ray): the same search on a local Ray;
  the driver's time per trial is set against the actors' recorded time per trial (composing,
  writing and evaluating), the difference being Ray's transport and the driver's bookkeeping.

Per engine it prints seconds per trial, trials per second and the overhead share. The model is
loaded once per process (and once per actor); that load is reported apart (first trial) and
left out of the per-trial figures, which use the trials after the first. On a 2-core machine
shared with other work, 2 Ray workers give no speed-up: each forward pass already uses the cores.

Modules: ``--modules x=DIR y=DIR``, or two random LoRA modules (r 8 on query/value, seeded) made
for the timing (their accuracy means nothing).

    nice python benchmarks/search.py --limit 64 --budget 6
    nice python benchmarks/search.py --model minilm --modules x=runs/a y=runs/b --limit 436 --budget 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def random_modules(model: str, root: Path) -> dict[str, str]:
    import peft
    import torch
    import transformers

    from pemarith.hf.models import resolve_model

    path = resolve_model(model)
    out = {}
    for name, seed in (("x", 1), ("y", 2)):
        base = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        pm = peft.get_peft_model(
            base,
            peft.LoraConfig(
                task_type="SEQ_CLS",
                r=8,
                lora_alpha=16,
                target_modules=["query", "value"],
                init_lora_weights=False,
            ),
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        pm.save_pretrained(str(root / name))
        out[name] = str(root / name)
    return out


def run(engine: str, workers: int, modules: dict[str, str], args: argparse.Namespace, root: Path) -> dict:
    import pemarith.hf.evaluate as E
    from pemarith.hf.search import run_search
    from pemarith.hf.search_config import SearchConfig

    spent: list[float] = []
    inner = E.evaluate_loaded

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent.append(time.perf_counter() - t)

    E.evaluate_loaded = timed
    stamps: list[float] = []
    cfg = SearchConfig(
        expr="a*x + b*y",
        modules=modules,
        keep="x",
        model=args.model,
        tasks=("sst2",),
        out=str(root / f"{engine}{workers}"),
        variables=("a=0:1", "b=0:1"),
        budget=args.budget,
        sampler="random",
        limit=args.limit,
        test_split=None,
        plot=False,
        data_dir=args.data_dir,
    )
    engine_fn = None
    if engine == "ray":
        from pemarith.hf.search_ray import ray_engine

        engine_fn = ray_engine(workers, None)
    t0 = time.perf_counter()
    try:
        result = run_search(
            cfg,
            log=lambda m: stamps.append(time.perf_counter()) if m.startswith("trial") else None,
            engine=engine_fn,
        )
    finally:
        E.evaluate_loaded = inner
    total = time.perf_counter() - t0
    # Trials are told K at a time (K workers): time per trial after the first batch.
    k = workers if engine == "ray" else 1
    per_trial = (stamps[-1] - stamps[k - 1]) / (len(stamps) - k) if len(stamps) > k else total
    recorded = statistics.median(t.seconds for t in result.trials[1:]) if len(result.trials) > 1 else 0.0
    out = {
        "engine": f"{engine} x{workers}" if engine == "ray" else "local",
        "trials": len(result.trials),
        "total_s": total,
        "first_trial_s": stamps[0] - t0 if stamps else total,
        "per_trial_s": per_trial,
        "trials_per_s": 1.0 / per_trial if per_trial else float("nan"),
        "recorded_s": recorded,
    }
    if engine == "local" and len(spent) > 1:
        evaluating = statistics.median(spent[1:])
        out["evaluate_s"] = evaluating
        out["overhead_share"] = max(per_trial - evaluating, 0.0) / per_trial
    elif engine == "ray":
        out["overhead_share"] = max(per_trial * workers - recorded, 0.0) / (per_trial * workers)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--modules", nargs=2, metavar="NAME=DIR", help="x=DIR y=DIR (default: random LoRA)")
    p.add_argument("--limit", type=int, default=64, help="validation rows (default 64; 436 is all)")
    p.add_argument("--budget", type=int, default=6)
    p.add_argument("--data-dir")
    p.add_argument("--no-ray", action="store_true", help="the local loop only")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pemarith-search-bench-") as tmp:
        root = Path(tmp)
        modules = (
            dict(m.split("=", 1) for m in args.modules) if args.modules else random_modules(args.model, root)
        )
        rows = [run("local", 1, modules, args, root)]
        if not args.no_ray:
            try:
                import ray  # noqa: F401
            except ImportError:
                print("ray is not installed: the Ray rows are skipped", file=sys.stderr)
            else:
                rows += [run("ray", k, modules, args, root) for k in (1, 2)]
    print(f"{args.model}, SST-2 validation, {args.limit} rows, {args.budget} trials (random sampler)")
    print(
        f"{'engine':<10} {'first s':>8} {'s/trial':>8} {'trials/s':>9} {'eval s':>8} {'recorded s':>11} "
        f"{'overhead':>9}"
    )
    for r in rows:
        ev = f"{r['evaluate_s']:.3f}" if "evaluate_s" in r else "-"
        share = f"{100 * r['overhead_share']:.1f}%" if "overhead_share" in r else "-"
        print(
            f"{r['engine']:<10} {r['first_trial_s']:8.2f} {r['per_trial_s']:8.3f} {r['trials_per_s']:9.2f} "
            f"{ev:>8} {r['recorded_s']:11.3f} {share:>9}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
