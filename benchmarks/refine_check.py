"""Check ``--search refine`` against the full grid on the sweeps a reproduction ran.

For every sweep that a reproduction's ``results.json`` points to and that used ``refine``, the
sweep's directory is copied and the same sweep is run again with ``--search grid``: the copied
``records.jsonl`` already holds refine's evaluations (the record cache is keyed by the
expression, the modules' sha256, the model, the tasks and the limit, not by the search), so only
the values refine skipped are evaluated. The two picks are compared: the same value, within one
grid step, a tie (another value with the same best validation score), or further apart, with
the metric at each pick and the number of evaluations each used.

    python benchmarks/refine_check.py runs/reproduce/distribution-generalisation/results.json \\
        runs/reproduce/init-analysis/results.json --out runs/refine-check --threads 1 \\
        --json runs/refine-check/refine-check.json

Full fine-tuning sweeps (``kind`` "full") are rerun the same way through
:func:`pemarith.hf.fullmerge.run_full_sweep`; 4.3's sweeps, which choose lambda by the mean of
the tasks' accuracies, through the same mean-of-tasks session the reproduction used.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import time
from pathlib import Path


def sweep_dirs(results: Path) -> list[Path]:
    """Every ``store/sweeps/...`` directory named in a reproduction's results file, in order."""
    text = results.read_text()
    seen: dict[str, None] = {}
    for m in re.finditer(r'"([^"]*store/sweeps/[^"]+)"', text):
        seen.setdefault(m.group(1), None)
    return [Path(p) for p in seen]


def fingerprint(d: Path) -> dict:
    with open(d / "records.jsonl") as f:
        return json.loads(f.readline())["fingerprint"]


def _grid_sweep(
    res: dict, fp: dict, target: Path, batch_size: int, data_dir: str | None
) -> tuple[float, dict[float, dict]]:
    """Run the full grid into ``target``; (pick, {value: validation scores})."""
    var = res["var"]
    if res.get("kind") == "full":
        from pemarith.hf.fullmerge import FullSession, run_full_sweep

        sweep = fp.get("sweep", {})
        session = FullSession(
            res["modules"],
            fp["tasks"],
            data_dir=data_dir,
            limit=sweep.get("limit"),
            batch_size=sweep.get("batch_size", batch_size),
        )
        extra = {k: v for k, v in fp.items() if k not in ("expr", "var", "kind")}
        out = run_full_sweep(
            session,
            res["expr"],
            target,
            var=var,
            grid=res["grid"],
            search="grid",
            select=res["select"],
            fingerprint=extra,
            test_split=None,
            plot=False,
            log=lambda s: None,
        )
        return out["pick"][var], {p[var]: p for p in out["validation"]}
    from pemarith.hf.sweep import SweepConfig, run_sweep

    cfg = SweepConfig(
        expr=res["expr"],
        var=var,
        modules=res["modules"],
        model=fp["model"],
        tasks=tuple(fp["tasks"]),
        out=str(target),
        grid=res["grid"],
        search="grid",
        select=res["select"],
        mode=fp["mode"],
        rank=fp["rank"],
        keep=fp["keep"],
        limit=fp["limit"],
        seed=fp["seed"],
        data_dir=data_dir,
        test_split=None,
        refs=False,
        base=False,
        batch_size=batch_size,
        plot=False,
    )
    wrap = None
    if (res.get("metrics") or [None])[0] == "mean":
        # 4.3 chooses lambda by the mean of the tasks' accuracies: the same wrapped session
        from pemarith.scenarios.multitask import mean_of_tasks as wrap
    out = run_sweep(cfg, wrap=wrap, log=lambda s: None)
    return out.pick, dict(out.validation)


def check(d: Path, out: Path, batch_size: int, data_dir: str | None) -> dict:
    from pemarith.hf.sweep import parse_grid

    res = json.loads((d / "results.json").read_text())
    fp = fingerprint(d)
    row = {
        "sweep": str(d),
        "task": ",".join(fp["tasks"]),
        "kind": res.get("kind"),
        "mode": fp.get("mode"),
        "name": d.name.rsplit("-", 1)[0],
    }
    if res.get("search") != "refine":
        return {**row, "skipped": "not refine"}
    target = out / fp["tasks"][0] / d.name
    if not target.exists():
        shutil.copytree(d, target)
    t = time.perf_counter()
    grid_pick, scores = _grid_sweep(res, fp, target, batch_size, data_dir)
    var, grid = res["var"], list(parse_grid(res["grid"]))
    step = min(b - a for a, b in itertools.pairwise(grid))
    scores = {round(v, 9): s for v, s in scores.items()}
    refine_pick, grid_pick = round(res["pick"][var], 9), round(grid_pick, 9)
    metric = res["metrics"][0] if res.get("metrics") else next(iter(scores[grid_pick]))
    apart = abs(refine_pick - grid_pick)
    return {
        **row,
        "metric": metric,
        "refine_pick": refine_pick,
        "grid_pick": grid_pick,
        "refine_score": scores[refine_pick][metric],
        "grid_score": scores[grid_pick][metric],
        "refine_evaluations": res["evaluations"],
        "grid_evaluations": len(grid),
        "agree": (
            "same"
            if apart < 1e-9
            else "one step"
            if apart <= step + 1e-9
            else "tie"
            if scores[refine_pick][metric] == scores[grid_pick][metric]
            else "apart"
        ),
        "seconds": round(time.perf_counter() - t, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="a reproduction's results.json")
    ap.add_argument("--out", type=Path, default=Path("runs/refine-check"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--markdown", action="store_true", help="also print the rows as a markdown table")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    rows, seen = [], set()
    for results in args.results:
        for d in sweep_dirs(results):
            if d in seen:  # 4.7 reuses 4.2's same-init sweeps
                continue
            seen.add(d)
            r = check(d, args.out, args.batch_size, args.data_dir)
            rows.append(r)
            if "skipped" in r:
                print(f"{r['task']:<6} {r['name']:<36} skipped ({r['skipped']})", flush=True)
            else:
                print(
                    f"{r['task']:<6} {r['name']:<36} refine l={r['refine_pick']:<5g} "
                    f"{r['metric']}={r['refine_score']:.4f} in {r['refine_evaluations']:>2} evals | "
                    f"grid l={r['grid_pick']:<5g} {r['grid_score']:.4f} in {r['grid_evaluations']} "
                    f"| {r['agree']}  ({r['seconds']} s)",
                    flush=True,
                )
    done = [r for r in rows if "skipped" not in r]
    if done:
        same = sum(r["agree"] == "same" for r in done)
        near = sum(r["agree"] == "one step" for r in done)
        tie = sum(r["agree"] == "tie" for r in done)
        ev = sum(r["refine_evaluations"] for r in done) / len(done)
        print(
            f"\n{len(done)} sweeps: same pick {same}, within one step {near}, a tie elsewhere {tie}, "
            f"further {len(done) - same - near - tie}; "
            f"refine used {ev:.1f} evaluations on average against {done[0]['grid_evaluations']}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    if args.markdown and done:
        print(
            "\n| task | sweep | metric | refine: l (score), evaluations | full grid: l (score), evaluations | |"
        )
        print("|---|---|---|---|---|---|")
        for r in done:
            print(
                f"| {r['task']} | {r['name']} | {r['metric']} | {r['refine_pick']:g} ({r['refine_score']:.4f}), "
                f"{r['refine_evaluations']} | {r['grid_pick']:g} ({r['grid_score']:.4f}), "
                f"{r['grid_evaluations']} | {r['agree']} |"
            )


if __name__ == "__main__":
    main()
