"""Benchmark: start-up of `pemarith inspect ADAPTER` against `python -c "import numpy"`.

The cheapest useful command (read one adapter's header and config, print a summary) against the
floor every numpy program pays: a fresh interpreter that imports numpy. Issue 21's goal: the
median of `inspect` within 2x of the median of the floor. Each measurement is one fresh process
timed from spawn to exit (the `measure` of compose_vs_peft.py, peak RSS from GNU time); the two
commands alternate. The adapter is one synthetic TinyLlama-shaped LoRA (50 MB float32, or
bfloat16 with `--dtype bfloat16`: the bfloat16 case shows whether ml_dtypes is imported).

    python benchmarks/startup.py [--repeats 21] [--dtype float32|bfloat16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_vs_peft import make_adapter, measure, pemarith_cmd  # noqa: E402
from floors import busy, precompile, uptime  # noqa: E402

GOAL = 2.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=21, help="runs per command (median; default 21)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", type=Path, help="also write every run here")
    args = p.parse_args(argv)
    print(f"# uptime before: {uptime()}")
    print(precompile())
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="pemarith-startup-bench-"))
    try:
        adapter = work / "adapter"
        make_adapter(adapter, seed=0, dtype=args.dtype)
        cmds = {
            "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
            "pemarith inspect": [*pemarith_cmd(), "inspect", str(adapter)],
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
        for rep in range(args.repeats):
            for name, cmd in cmds.items():
                wall, rss, _, _ = measure(cmd)
                runs[name].append((wall, rss))
            print(
                f"  rep {rep + 1}: " + ", ".join(f"{k} {v[-1][0]:.3f} s" for k, v in runs.items()), flush=True
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {
        k: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for k, v in runs.items()
    }
    print(f"\n# medians over {args.repeats} paired runs ({args.dtype} adapter)")
    print("| command | wall s | peak RSS MB |")
    print("|---|---|---|")
    for k, (w, m) in med.items():
        print(f"| {k} | {w:.3f} | {m:.0f} |")
    ratio = med["pemarith inspect"][0] / med["python -c 'import numpy'"][0]
    print(
        f"pemarith inspect / import numpy: {ratio:.2f}x ({'met' if ratio <= GOAL else 'NOT met'}: goal <= {GOAL}x)"
    )
    print(f"# uptime after: {uptime()}")
    if busy(load_before, os.getloadavg()[0]):
        print("# LOADED: the load beyond this benchmark exceeded 1.0; do not publish these figures")
    if args.json:
        args.json.write_text(
            json.dumps({"dtype": args.dtype, "runs": runs, "medians": med, "ratio": ratio}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
