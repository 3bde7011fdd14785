"""Benchmark: TIES and DARE from the adapter files, in dense and core space, against PEFT's
``add_weighted_adapter(combination_type="ties_svd" | "dare_ties_svd")`` (issue 20).

The adapters are those of ``compose_vs_peft.py``: synthetic LoRA modules shaped like
TinyLlama-1.1B's (hidden 2048, intermediate 5632, targets q,k,v,o,gate,up,down, r=16, float32),
here of the first ``--layers`` decoder layers (default 1: a dense merge does a full SVD of every
2048 x 5632 update, about 45 s per decoder layer on 2 cores, so all 22 layers would take 15
minutes per run; every cost here is per layer and scales linearly with the layer count). Every
module has coefficient 1 (TIES' unit weights), density 0.5, output rank 16.

    pemarith dense   compose --mode exact --rank 16 --method M --density 0.5 --space dense
    pemarith core    compose --mode exact --rank 16 --method M --density 0.5 --space core
    PEFT             a LlamaConfig base of --layers layers (random init, no download) +
                     PeftModel + add_weighted_adapter(combination_type=M + "_svd",
                     density=0.5, svd_rank=16) + save_pretrained

Each measurement is one fresh process (spawn to exit; peak RSS from GNU time), the tools
alternating within a repeat; medians over --repeats. A PEFT run still going after --timeout
seconds is killed and reported as a lower bound (">"). Goals (issue 20): pemarith >= 100x
faster than PEFT with <= 1/10 of its memory; core space >= 5x faster than dense at 8 modules.
Dense and core space are different merges for TIES/DARE (docs/SPEC.md, "Core space"); the
script times them, it does not compare their outputs.

    python benchmarks/methods.py --quick           # smoke: 2 modules, 1 repeat, no PEFT (~2 min)
    nice python benchmarks/methods.py               # 2 4 8 modules x 3 repeats (~30 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_vs_peft import (
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    RANK,
    VOCAB,
    ChildFailed,
    make_adapter,
    measure,
    median,
    pemarith_cmd,
)
from floors import busy, precompile, uptime

METHODS = ("ties", "dare_ties")
SPACES = ("dense", "core")
DENSITY = 0.5
SPEED_GOAL, MEMORY_GOAL, CORE_GOAL = 100.0, 1 / 10, 5.0


def run_pemarith(method: str, space: str, adapters: list[Path], out: Path) -> dict:
    names = [f"m{i}" for i in range(len(adapters))]
    cmd = [*pemarith_cmd(), "compose", "--json", "-o", str(out), "--mode", "exact", "--rank", str(RANK)]
    cmd += ["--method", method, "--density", str(DENSITY), "--space", space]
    for name, path in zip(names, adapters):
        cmd += ["-m", f"{name}={path}"]
    wall, rss, stdout, _ = measure([*cmd, "--", " + ".join(names)])
    report = json.loads(stdout)
    return {"wall_s": wall, "rss_mb": rss, "max_layer_error": report.get("max_layer_error")}


def run_peft(method: str, adapters: list[Path], out: Path, layers: int, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_peft", method, str(out), str(layers)]
    wall, rss, stdout, timed_out = measure([*cmd, *map(str, adapters)], timeout)
    phases = {} if timed_out else json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "rss_mb": rss, "timed_out": timed_out, **phases}


def peft_child(method: str, out: str, layers: int, adapters: list[str]) -> None:
    """One PEFT merge end to end, as a user would run it; prints its phase times."""
    t0 = time.perf_counter()
    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    phases = {"import_s": time.perf_counter() - t0}
    t = time.perf_counter()
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    phases["base_model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    names = [f"m{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    phases["load_adapters_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model.add_weighted_adapter(
        names,
        [1.0] * len(names),
        "combined",
        combination_type=f"{method}_svd",
        density=DENSITY,
        svd_rank=RANK,
    )
    phases["combine_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model.save_pretrained(out, selected_adapters=["combined"])
    phases["save_s"] = time.perf_counter() - t
    print(json.dumps(phases))


def table(runs: list[dict], modules: list[int]) -> str:
    lines = [
        "| modules | method | pemarith dense s | dense MB | pemarith core s | core MB | PEFT *_svd s "
        "| PEFT MB | dense vs PEFT | core vs PEFT | core memory / PEFT | core vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def med(tool: str, method: str, n: int, key: str) -> float:
        return median([r[key] for r in runs if (r["tool"], r["method"], r["modules"]) == (tool, method, n)])

    for n in modules:
        for method in METHODS:
            dense, core = med("dense", method, n, "wall_s"), med("core", method, n, "wall_s")
            dmb, cmb = med("dense", method, n, "rss_mb"), med("core", method, n, "rss_mb")
            theirs = [r for r in runs if (r["tool"], r["method"], r["modules"]) == ("peft", method, n)]
            cut = any(r["timed_out"] for r in theirs)
            ge = ">= " if cut else ""
            if theirs:
                pw, pm = med("peft", method, n, "wall_s"), med("peft", method, n, "rss_mb")
                peft_s = f"{'> ' if cut else ''}{pw:.1f} (n={len(theirs)})"
                peft_mb = f"{ge}{pm:.0f}"
                vs = (
                    f"{ge}{pw / dense:.1f}x",
                    f"{ge}{pw / core:.0f}x",
                    f"{'<= ' if cut else ''}{cmb / pm:.3f}",
                )
            else:
                peft_s, peft_mb, vs = "skipped", "-", ("-", "-", "-")
            lines.append(
                f"| {n} | {method} | {dense:.2f} | {dmb:.0f} | {core:.2f} | {cmb:.0f} | {peft_s} | {peft_mb} "
                f"| {vs[0]} | {vs[1]} | {vs[2]} | {dense / core:.0f}x |"
            )
    return "\n".join(lines)


def goals(runs: list[dict], modules: list[int]) -> list[str]:
    out = []

    def walls(tool: str, method: str, m: int) -> list[float]:
        return [r["wall_s"] for r in runs if (r["tool"], r["method"], r["modules"]) == (tool, method, m)]

    for method in METHODS:
        n = max(modules)
        ratio = median(walls("dense", method, n)) / median(walls("core", method, n))
        out.append(
            f"{method}: core space {ratio:.0f}x faster than dense at {n} modules "
            f"(goal >= {CORE_GOAL:.0f}x: {'met' if ratio >= CORE_GOAL else 'NOT met'})"
        )
        for m in modules:
            theirs = [r for r in runs if (r["tool"], r["method"], r["modules"]) == ("peft", method, m)]
            if not theirs:
                continue
            cut = any(r["timed_out"] for r in theirs)
            pw, pm = median([r["wall_s"] for r in theirs]), median([r["rss_mb"] for r in theirs])
            for space in SPACES:
                mine = [r for r in runs if (r["tool"], r["method"], r["modules"]) == (space, method, m)]
                w, mb = median([r["wall_s"] for r in mine]), median([r["rss_mb"] for r in mine])
                met = pw / w >= SPEED_GOAL and mb / pm <= MEMORY_GOAL
                verdict = "met" if met else ("undecided (PEFT killed)" if cut else "NOT met")
                out.append(
                    f"{method}, {m} modules, {space}: {'>= ' if cut else ''}{pw / w:.1f}x faster, "
                    f"{mb / pm:.3f} of PEFT's memory (goal >= {SPEED_GOAL:.0f}x and <= 1/10: {verdict})"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--modules", type=int, nargs="+", default=[2, 4, 8], help="module counts (default 2 4 8)")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (median; default 3)")
    p.add_argument("--layers", type=int, default=1, help="decoder layers of the adapters (default 1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a PEFT run is killed")
    p.add_argument("--skip-peft", action="store_true", help="pemarith only")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 modules, 1 repeat, no PEFT")
    p.add_argument("--json", type=Path, help="also write every run here")
    args = p.parse_args(argv)
    if args.quick:
        args.modules, args.repeats, args.skip_peft = [2], 1, True
    print(f"uptime before: {uptime()}")
    print(f"precompiled: {precompile()}")
    before = os.getloadavg()[0]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pemarith-methods-") as tmp:
        root = Path(tmp)
        adapters = [root / f"m{i}" for i in range(max(args.modules))]
        for i, path in enumerate(adapters):
            make_adapter(path, seed=100 + i, layers=args.layers)
        for rep in range(args.repeats):
            for n in args.modules:
                for method in METHODS:
                    tools = [*SPACES, *([] if args.skip_peft else ["peft"])]
                    for tool in tools:
                        out = root / f"out-{tool}-{method}-{n}-{rep}"
                        try:
                            if tool == "peft":
                                run = run_peft(method, adapters[:n], out, args.layers, args.timeout)
                            else:
                                run = run_pemarith(method, tool, adapters[:n], out)
                        except ChildFailed as e:
                            print(f"FAILED: {e}", file=sys.stderr)
                            continue
                        run.update(tool=tool, method=method, modules=n, repeat=rep)
                        runs.append(run)
                        print(
                            f"  repeat {rep} {n} modules {method} {tool}: {run['wall_s']:.2f} s, "
                            f"{run['rss_mb']:.0f} MB{' (killed)' if run.get('timed_out') else ''}",
                            flush=True,
                        )
    after = os.getloadavg()[0]
    print(
        f"\n{args.layers} TinyLlama-shaped decoder layer(s) x 7 targets, r={RANK}, density {DENSITY}, "
        f"output rank {RANK}; medians of {args.repeats} fresh-process runs\n"
    )
    print(table(runs, args.modules))
    print()
    for line in goals(runs, args.modules):
        print(line)
    print(f"\nuptime after: {uptime()}")
    if busy(before, after):
        print("WARNING: the machine had other load; do not publish these figures")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_peft":
        peft_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
        sys.exit(0)
    sys.exit(main())
