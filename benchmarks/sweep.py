"""Benchmark: the in-place lambda sweep against the naive loop, on the real MiniLM and SST-2.

Both evaluate ``l*a + (1-l)*b`` for 11 values of l (0, 0.1, ..., 1) on SST-2 validation (the
first half of the GLUE dev set by the split seed, 436 rows; ``--limit`` keeps fewer) with two
LoRA modules ``a`` and ``b``:

- in place: ``pemarith.hf.sweep.run_sweep`` (what ``pemarith sweep`` runs): MiniLM is loaded once,
  each value's composition is copied into the live PEFT model, the model is evaluated.
- naive: for each value, compose to disk (``PEM.save``), load MiniLM and the adapter fresh
  (``PeftModel.from_pretrained``, merged), evaluate: ``pemarith.hf.evaluate.evaluate(pem=...)``,
  all values in one process.
- naive, one process per value (``--per-process``, on by default): the same, but each value in
  its own Python process, as the paper's shell loops over lambda do (interpreter start-up and the
  torch/transformers imports are paid per value).
- in place, N workers (``--workers N``, default 2; 1 to skip): ``run_sweep`` with
  ``workers=N``, N Ray actors on a local Ray evaluating the grid (``pemarith sweep --workers``);
  each loads MiniLM once. Its speed-up over "in place" says what a second core buys; on a
  machine whose cores are busy with other work it says nothing.

Each method runs ``--repeat`` times (default 3), interleaved round robin so that drift in the
machine's load reaches every method alike; the trial with the median wall time is reported.
Each run is a fresh process, timed from spawn to exit (wall and CPU time); each child
also times what it spends inside ``evaluate_loaded``, so that "evaluating" and "everything else"
(start-up, imports, loading, composing, writing) are told apart within the same process, which
keeps the comparison readable when other jobs share the CPU. The children's validation accuracies
must agree value for value (they are printed side by side).

Modules: ``--modules a=DIR b=DIR``, or two quick ones are trained first with ``hf.train``
(``--train-steps`` steps each on the label-skewed SST-2 subsets skew0/skew1 of Appendix B).

    nice python benchmarks/sweep.py                    # trains two modules, then the benchmark
    nice python benchmarks/sweep.py --modules a=runs/a b=runs/b --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPR = "l*a + (1-l)*b"
GRID = "0:1:0.1"  # 11 values


def _values() -> list[float]:
    from pemarith.hf.sweep import parse_grid

    return list(parse_grid(GRID))


# ----------------------------------------------------------------------------- children


def _timed_evaluations() -> list[float]:
    """Wrap ``evaluate_loaded`` so that the child can tell evaluating from everything else."""
    import pemarith.hf.evaluate as E

    spent: list[float] = []
    inner = E.evaluate_loaded

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent.append(time.perf_counter() - t)

    E.evaluate_loaded = timed
    return spent


def child_inplace(args: argparse.Namespace) -> dict:
    from pemarith.hf.sweep import SweepConfig, run_sweep

    spent = _timed_evaluations()
    cfg = SweepConfig(
        expr=EXPR,
        modules={"a": args.a, "b": args.b},
        model="minilm",
        tasks=("sst2",),
        out=args.out,
        grid=GRID,
        limit=args.limit,
        refs=False,
        test_split=None,
        plot=False,
        data_dir=args.data_dir,
        workers=args.child_workers,
    )
    lines: list[str] = []
    result = run_sweep(cfg, log=lines.append)
    # with workers, eval_s is 0: the Ray actors evaluate, not this process
    return {
        "eval_s": sum(spent),
        "evals": len(spent),
        "accuracy": {format(v, "g"): s["accuracy"] for v, s in result.validation},
        "log": lines,
    }


def child_naive(args: argparse.Namespace) -> dict:
    """Per value: compose to disk, load base + adapter fresh (merged), evaluate: what
    ``pemarith.hf.evaluate.evaluate(pem=...)`` does, with its phases timed."""
    import pemarith
    from pemarith.hf import evaluate as E
    from pemarith.hf.data import load_split
    from pemarith.hf.tasks import get_task

    spent = _timed_evaluations()
    task = get_task("sst2")
    values = [float(v) for v in args.value] if args.value else _values()
    acc, phases = {}, {"compose_save_s": 0.0, "load_s": 0.0}
    for v in values:
        rows = load_split("sst2", "validation", data_dir=args.data_dir)
        rows = rows[: args.limit] if args.limit else rows
        with tempfile.TemporaryDirectory(prefix="pemarith-naive-") as tmp:
            t = time.perf_counter()
            pem = pemarith.compose(EXPR, {"a": args.a, "b": args.b}, l=v)
            pem.save(Path(tmp) / "composed")
            phases["compose_save_s"] += time.perf_counter() - t
            t = time.perf_counter()
            model, tok = E.load_for_eval("minilm", task, Path(tmp) / "composed")
            phases["load_s"] += time.perf_counter() - t
            acc[format(v, "g")] = E.evaluate_loaded(model, tok, task, rows)["accuracy"]
            del model
    return {"eval_s": sum(spent), "evals": len(spent), "accuracy": acc, **phases}


CHILDREN = {"inplace": child_inplace, "naive": child_naive}


# ----------------------------------------------------------------------------- parent


def spawn(kind: str, common: list[str], extra: list[str] = ()) -> dict:
    """Run one child; its wall time from spawn to exit and its CPU time (user + sys)."""
    import resource

    cmd = [sys.executable, __file__, "--child", kind, *common, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, **json.loads(proc.stdout.strip().splitlines()[-1])}


def train_modules(workdir: Path, steps: int, data_dir: str | None) -> tuple[str, str]:
    from pemarith.hf.train import TrainConfig, train

    out = []
    for name, subset in (("a", "skew0"), ("b", "skew1")):
        path = workdir / name
        if not (path / "adapter_config.json").is_file():
            t = time.perf_counter()
            train(
                TrainConfig(
                    model="minilm",
                    task="sst2",
                    output_dir=path,
                    r=8,
                    alpha=16,
                    steps=steps,
                    batch_size=16,
                    max_length=64,
                    subset=subset,
                    data_dir=data_dir,
                    progress=False,
                )
            )
            print(f"trained {name} on sst2 {subset}: {steps} steps, {time.perf_counter() - t:.0f} s")
        out.append(str(path))
    return out[0], out[1]


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs=2, metavar="NAME=DIR", help="a=DIR b=DIR (default: train two)")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--limit", type=int, default=None, help="validation rows (default: all 436)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--workdir", default=None, help="where trained modules and outputs go")
    ap.add_argument("--no-per-process", action="store_true", help="skip the one-process-per-value loop")
    ap.add_argument("--repeat", type=int, default=3, help="trials per method; the median is reported")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also time the in-place sweep with this many worker processes (1: skip)",
    )
    # internal: child processes
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--a", help=argparse.SUPPRESS)
    ap.add_argument("--b", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--value", action="append", help=argparse.SUPPRESS)
    ap.add_argument("--child-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pemarith-sweep-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.modules:
        mods = dict(m.split("=", 1) for m in args.modules)
        a, b = mods["a"], mods["b"]
    else:
        a, b = train_modules(workdir, args.train_steps, args.data_dir)
    common = ["--a", a, "--b", b]
    if args.limit:
        common += ["--limit", str(args.limit)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]

    print(f"load average before: {load_average()} (nproc {os.cpu_count()})")
    methods = {
        "in place": lambda i: [
            spawn("inplace", common, ["--out", str(workdir / f"inplace-{i}-{time.time_ns()}")])
        ],
        "naive, one process": lambda i: [spawn("naive", common)],
    }
    if args.workers > 1:
        methods[f"in place, {args.workers} workers"] = lambda i: [
            spawn(
                "inplace",
                common,
                [
                    "--out",
                    str(workdir / f"workers-{i}-{time.time_ns()}"),
                    "--child-workers",
                    str(args.workers),
                ],
            )
        ]
    if not args.no_per_process:
        methods["naive, process per value"] = lambda i: [
            spawn("naive", common, ["--value", str(v)]) for v in _values()
        ]
    trials: dict[str, list[dict]] = {name: [] for name in methods}
    for i in range(args.repeat):  # round robin, so that drift in the machine's load hits every method
        for name, run_one in methods.items():
            parts = run_one(i)
            r = {key: sum(p[key] for p in parts) for key in ("wall_s", "cpu_s", "eval_s", "evals")}
            r["accuracy"] = {k: v for p in parts for k, v in p["accuracy"].items()}
            r.update({k: sum(p[k] for p in parts) for k in ("compose_save_s", "load_s") if k in parts[0]})
            r["log"] = [line for p in parts for line in p.get("log", [])]
            trials[name].append(r)
            print(f"[{i + 1}/{args.repeat}] {name}: {r['wall_s']:.1f} s   load average {load_average()}")
    # the trial with the median wall time stands for each method; every trial's wall time is kept
    runs: dict[str, dict] = {}
    for name, rs in trials.items():
        med = sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2]
        runs[name] = {**med, "wall_s_trials": [r["wall_s"] for r in rs]}
    print(f"load average after: {load_average()}")

    base = runs["in place"]
    n = len(base["accuracy"])
    print(f"\n{n} values of l, SST-2 validation ({args.limit or 'all 436'} rows), MiniLM, LoRA a/b")
    print(
        "'evaluating' is the time inside evaluate_loaded; 'other' is the rest of the wall time\n"
        "(interpreter start-up, imports, loading, composing, writing), both measured in the child.\n"
    )
    print(f"median of {args.repeat} trials per method (wall s of every trial in --json)\n")
    print(
        f"{'method':<26}{'wall s':>8}{'CPU s':>8}{'evaluating s':>14}{'other s':>9}"
        f"{'wall ratio':>12}{'other ratio':>13}"
    )
    for name, r in runs.items():
        r["other_s"] = r["wall_s"] - r["eval_s"]
        print(
            f"{name:<26}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['eval_s']:>14.1f}{r['other_s']:>9.1f}"
            f"{r['wall_s'] / base['wall_s']:>11.2f}x{r['other_s'] / base['other_s']:>12.1f}x"
        )
    if args.workers > 1:
        print(f"(in place, {args.workers} workers: 'evaluating' is not timed: the Ray actors evaluate)")
    naive = runs["naive, one process"]
    if "load_s" in naive:
        print(
            f"\nnaive, one process, per value: compose + save {naive['compose_save_s'] / n:.2f} s, "
            f"load base + adapter {naive['load_s'] / n:.2f} s"
        )
    writes = [float(line.split("(write ")[1].split(" s")[0]) for line in base["log"] if "(write " in line]
    if writes:
        print(
            f"in place, per value: write the composition {sorted(writes)[len(writes) // 2]:.3f} s "
            f"(median; the first value's {writes[0]:.2f} s includes loading MiniLM)"
        )
    agree = all(
        abs(r["accuracy"][k] - base["accuracy"][k]) < 1e-9 for r in runs.values() for k in base["accuracy"]
    )
    print("accuracies agree across methods:", agree)
    print("l:         " + " ".join(f"{k:>6}" for k in base["accuracy"]))
    for name, r in runs.items():
        print(f"{name[:10]:<11}" + " ".join(f"{r['accuracy'][k]:>6.3f}" for k in base["accuracy"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "load": load_average()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
