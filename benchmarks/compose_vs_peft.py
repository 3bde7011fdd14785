"""Benchmark: `pemarith compose` against PEFT's `add_weighted_adapter`, end to end.

Synthetic LoRA adapters shaped like TinyLlama-1.1B's (hidden 2048, intermediate 5632,
22 layers, 32 query heads and 4 KV heads so k/v_proj output 256, targets q,k,v,o,gate,up,down,
r=16, float32) are written directly with safetensors + adapter_config.json: pemarith needs no
base model. Each measurement is one fresh process, timed from spawn to exit, with its peak RSS
taken from GNU time's %M (see `measure`). pemarith and PEFT runs alternate; medians over
--repeats are reported.

    mode pairs         pemarith                   PEFT (base model + PeftModel + save)
    factorwise         compose --mode factorwise  add_weighted_adapter(combination_type="linear")
    exact              compose --mode exact       add_weighted_adapter(combination_type="cat")
    exact --rank 16    compose --mode exact -r16  add_weighted_adapter(combination_type="svd", svd_rank=16)

The PEFT child builds the TinyLlama base from a LlamaConfig with random init (no download:
this stands in for loading the checkpoint), loads every adapter with PeftModel, combines and
saves. Its phases are reported separately so the base-model cost can be read apart.

The I/O floor of a pemarith run is (bytes read + bytes written) / read bandwidth, with the
bandwidth measured by reading the inputs after asking the kernel to drop them from the page
cache (posix_fadvise DONTNEED; "cold-ish": it cannot evict what other processes pin) and again
warm. By default the inputs are evicted the same way before every run (--warm to skip).

Usage: see benchmarks/README.md. `python benchmarks/compose_vs_peft.py --quick` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floors import busy, copy_cmd, cp_cmd, precompile, uptime

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, VOCAB = 2048, 5632, 22, 32, 4, 32000
KV_OUT = HIDDEN // HEADS * KV_HEADS  # 256
RANK, ALPHA = 16, 32
# target -> (parent, in_features, out_features)
TARGETS = {
    "q_proj": ("self_attn", HIDDEN, HIDDEN),
    "k_proj": ("self_attn", HIDDEN, KV_OUT),
    "v_proj": ("self_attn", HIDDEN, KV_OUT),
    "o_proj": ("self_attn", HIDDEN, HIDDEN),
    "gate_proj": ("mlp", HIDDEN, INTERMEDIATE),
    "up_proj": ("mlp", HIDDEN, INTERMEDIATE),
    "down_proj": ("mlp", INTERMEDIATE, HIDDEN),
}
WEIGHTS = "adapter_model.safetensors"

# name -> (pemarith compose options, PEFT combination_type)
PAIRS = {
    "factorwise": (["--mode", "factorwise"], "linear"),
    "exact": (["--mode", "exact"], "cat"),
    "exact --rank 16": (["--mode", "exact", "--rank", str(RANK)], "svd"),
}
GOALS = {  # pair -> (min speed-up, max memory ratio); issue 21 for exact, issue 8 for svd
    "exact": (10.0, 1 / 4),
    "exact --rank 16": (100.0, 1 / 10),
}
IO_FLOOR_GOAL = 3.0  # the older bandwidth-based floor (issue 8)
COPY_FLOOR_GOAL = {4: 2.0, 32: 1.5}  # modules -> max pemarith exact / fsynced copy (issue 21)


# ----------------------------------------------------------------------------- adapters


def adapter_config() -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "synthetic/TinyLlama-1.1B-shaped",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": sorted(TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "revision": None,
    }


def make_adapter(path: Path, seed: int, dtype: str = "float32", layers: int = LAYERS) -> None:
    """A TinyLlama-shaped LoRA adapter with random float32 (or bfloat16) factors (its first
    ``layers`` decoder layers)."""
    from safetensors.numpy import save_file

    if dtype == "bfloat16":
        save_file = _save_bf16
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for target, (parent, d_in, d_out) in TARGETS.items():
            key = f"base_model.model.model.layers.{layer}.{parent}.{target}"
            a = rng.standard_normal((RANK, d_in), dtype=np.float32) / np.float32(np.sqrt(d_in))
            b = rng.standard_normal((d_out, RANK), dtype=np.float32) * np.float32(0.01)
            tensors[f"{key}.lora_A.weight"] = a
            tensors[f"{key}.lora_B.weight"] = b
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(adapter_config(), indent=2))


def _save_bf16(tensors: dict, filename: str, metadata: dict) -> None:
    """Write float arrays as a bfloat16 safetensors file (pemarith's writer; rounded on the bits)."""
    from pemarith.io import SafetensorsWriter

    specs = [(k, "BF16", tuple(v.shape)) for k, v in tensors.items()]
    writer = SafetensorsWriter(Path(filename), specs, metadata)
    for k, v in tensors.items():
        writer.write(k, v)
    writer.close()


# ----------------------------------------------------------------------------- measuring


@dataclass
class Run:
    tool: str
    pair: str
    modules: int
    wall_s: float
    max_rss_mb: float
    detail: dict = field(default_factory=dict)


class ChildFailed(RuntimeError):
    """A measured process exited non-zero; the run is reported as failed, the rest go on."""


def evict(paths: list[Path]) -> None:
    """Ask the kernel to drop these files from the page cache (best effort, no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bandwidth(paths: list[Path], cold: bool) -> float:
    """Bytes per second of reading ``paths`` in 16 MiB chunks."""
    if cold:
        evict(paths)
    total, start = 0, time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    return total / (time.perf_counter() - start)


def _hwm_mb(pid: int) -> float:
    """Peak RSS so far of a running process (VmHWM), in MB; 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


GNU_TIME = shutil.which("time", path="/usr/bin:/bin")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def measure(cmd: list[str], timeout: float | None = None) -> tuple[float, float, str, bool]:
    """(wall seconds, peak RSS in MB, stdout, timed out) of one fresh child process.

    The peak RSS comes from GNU time (``%M``) when /usr/bin/time exists: ``wait4``'s
    ``ru_maxrss`` of a direct child also counts the parent's pages it held between fork and
    exec (measured: a 400 MB parent made `true` report 415 MB). A child still running after
    ``timeout`` seconds is killed; its wall time and peak RSS so far are then lower bounds.
    """
    # Offline: PEFT would otherwise look the synthetic base model up on the hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss_file,
    ):
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *cmd] if GNU_TIME else cmd
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=err, env=env, start_new_session=True)
        timed_out, hwm = False, 0.0
        while True:
            # no timeout: block in wait4 (exact wall time; polling would round it up to 20 ms)
            pid, status, usage = os.wait4(proc.pid, 0 if timeout is None else os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - start > timeout:
                hwm = max(_hwm_mb(p) for p in (_children(proc.pid) if GNU_TIME else [proc.pid]))
                os.killpg(proc.pid, 9)  # the whole session: time and what it runs
                _, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.02)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        measured = rss_file.read().strip().splitlines()
    if timed_out:
        rss = hwm
    elif GNU_TIME and measured and measured[-1].isdigit():
        rss = int(measured[-1]) / 1024  # KiB
    else:
        rss = usage.ru_maxrss / 1024  # KiB on Linux; an upper bound, see above
    if proc.returncode != 0 and not timed_out:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise ChildFailed(f"child failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return wall, rss, stdout, timed_out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pemarith_cmd() -> list[str]:
    script = shutil.which("pemarith", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "pemarith.cli"]


def coefficient(weight: float | None, n: int) -> float:
    """Each module's coefficient: ``--weight`` or, by default, 1/n (a power of two for the
    usual n, which lets exact compose scale the A factors in float32)."""
    return 1 / n if weight is None else weight


def run_pemarith(pair: str, adapters: list[Path], out: Path, weight: float | None = None) -> Run:
    names = [f"m{i}" for i in range(len(adapters))]
    weight = coefficient(weight, len(adapters))
    expr = " + ".join(f"{weight!r}*{n}" for n in names)
    cmd = [*pemarith_cmd(), "compose", "--json", "-o", str(out), *PAIRS[pair][0]]
    for name, path in zip(names, adapters):
        cmd += ["-m", f"{name}={path}"]
    wall, rss, stdout, _ = measure([*cmd, "--", expr])
    report = json.loads(stdout)
    detail = {
        "in_process_s": report.get("seconds"),
        "bytes_written": dir_bytes(out),
        "max_layer_error": report.get("max_layer_error"),
    }
    return Run("pemarith", pair, len(adapters), wall, rss, detail)


def run_peft(
    pair: str, adapters: list[Path], out: Path, dtype: str, timeout: float, weight: float | None = None
) -> Run:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "_peft",
        "--combination",
        PAIRS[pair][1],
        "--out",
        str(out),
        "--dtype",
        dtype,
        "--weight",
        repr(coefficient(weight, len(adapters))),
        *map(str, adapters),
    ]
    wall, rss, stdout, timed_out = measure(cmd, timeout)
    detail = {"timed_out": True} if timed_out else json.loads(stdout.strip().splitlines()[-1])
    return Run("peft", pair, len(adapters), wall, rss, detail)


def peft_child(args: argparse.Namespace) -> None:
    """One PEFT composition end to end, as a user would run it; prints its phase times."""
    t0 = time.perf_counter()
    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    phases = {"import_s": time.perf_counter() - t0}
    t = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, args.dtype))
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    phases["base_model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    names = [f"m{i}" for i in range(len(args.adapters))]
    model = PeftModel.from_pretrained(model, args.adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], args.adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    phases["load_adapters_s"] = time.perf_counter() - t
    t = time.perf_counter()
    extra = {"svd_rank": RANK} if args.combination == "svd" else {}
    model.add_weighted_adapter(
        names, [args.weight] * len(names), "combined", combination_type=args.combination, **extra
    )
    phases["combine_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model.save_pretrained(args.out, selected_adapters=["combined"])
    phases["save_s"] = time.perf_counter() - t
    print(json.dumps(phases))


# ----------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[Run], floors: dict[tuple[str, int], dict]) -> str:
    lines = [
        "| modules | mode (pemarith vs PEFT) | pemarith s | pemarith MB | PEFT s | PEFT MB "
        "| speed-up | memory ratio | goal | pemarith / I/O floor (cold, warm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted({r.modules for r in runs}):
        for pair, (_, combination) in PAIRS.items():
            ours = [r for r in runs if r.tool == "pemarith" and r.pair == pair and r.modules == n]
            theirs = [r for r in runs if r.tool == "peft" and r.pair == pair and r.modules == n]
            if not ours:
                continue
            w, m = median([r.wall_s for r in ours]), median([r.max_rss_mb for r in ours])
            pw, pm = median([r.wall_s for r in theirs]), median([r.max_rss_mb for r in theirs])
            cut = any(r.detail.get("timed_out") for r in theirs)
            ge, le = (">= ", "<= ") if cut else ("", "")
            speed_s, mem_s = (f"{ge}{pw / w:.0f}x", f"{le}{m / pm:.3f}") if theirs else ("-", "-")
            goal = "-"
            if pair in GOALS and theirs:
                need_speed, need_mem = GOALS[pair]
                met = pw / w >= need_speed and m / pm <= need_mem
                verdict = "met" if met else ("undecided" if cut else "NOT met")
                goal = f"{verdict} (>= {need_speed:.0f}x, <= 1/{1 / need_mem:.0f})"
            fl = floors[(pair, n)]
            cold, warm = w / fl["cold_s"], w / fl["warm_s"]
            io = f"{cold:.1f}x, {warm:.1f}x {'(met)' if cold <= IO_FLOOR_GOAL else '(NOT met)'}"
            peft_s = (
                f"{'> ' if cut else ''}{pw:.1f} (n={len(theirs)}" + (", killed)" if cut else ")")
                if theirs
                else "skipped"
            )
            peft_mb = f"{'>= ' if cut else ''}{pm:.0f}" if theirs else "-"
            lines.append(
                f"| {n} | {pair} vs {combination} | {w:.2f} | {m:.0f} | {peft_s} | {peft_mb} "
                f"| {speed_s} | {mem_s} | {goal} | {io} |"
            )
    return "\n".join(lines)


def phase_table(runs: list[Run]) -> str:
    keys = ["import_s", "base_model_s", "load_adapters_s", "combine_s", "save_s"]
    lines = ["| modules | PEFT combination | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for n in sorted({r.modules for r in runs}):
        for pair, (_, combination) in PAIRS.items():
            theirs = [
                r
                for r in runs
                if r.tool == "peft" and r.pair == pair and r.modules == n and not r.detail.get("timed_out")
            ]
            if theirs:
                cells = [f"{median([r.detail[k] for r in theirs]):.1f}" for k in keys]
                lines.append(f"| {n} | {combination} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floor_table(runs: list[Run]) -> str:
    """Median wall time of each floor and every pemarith mode's ratio to the fsynced copy."""
    pairs = [p for p in PAIRS if any(r.tool == "pemarith" and r.pair == p for r in runs)]
    lines = [
        "| modules | numpy + fsynced copy s | cp -r s | "
        + " | ".join(f"pemarith {p} / fsynced copy" for p in pairs)
        + " | goal (exact) |",
        "|---|---|---|" + "---|" * len(pairs) + "---|",
    ]
    for n in sorted({r.modules for r in runs if r.pair == "floor"}):
        copy = median([r.wall_s for r in runs if r.tool == "copy+fsync" and r.modules == n])
        cp = median([r.wall_s for r in runs if r.tool == "cp -r" and r.modules == n])
        ratios = {
            p: median([r.wall_s for r in runs if r.tool == "pemarith" and r.pair == p and r.modules == n])
            / copy
            for p in pairs
        }
        goal = "-"
        if n in COPY_FLOOR_GOAL and "exact" in ratios:
            need = COPY_FLOOR_GOAL[n]
            goal = f"{'met' if ratios['exact'] <= need else 'NOT met'} (<= {need}x)"
        lines.append(
            f"| {n} | {copy:.2f} | {cp:.2f} | "
            + " | ".join(f"{ratios[p]:.2f}x" for p in pairs)
            + f" | {goal} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--modules",
        type=int,
        nargs="+",
        default=[2, 4, 8],
        help="numbers of adapters to compose (default: 2 4 8)",
    )
    p.add_argument("--repeats", type=int, default=5, help="runs per configuration (median; default 5)")
    p.add_argument(
        "--peft-svd-modules",
        type=int,
        nargs="*",
        default=[2],
        help="module counts for which PEFT svd runs (slow: ~300 s, ~6 GB for 2)",
    )
    p.add_argument("--peft-svd-repeats", type=int, default=1)
    p.add_argument("--skip-peft-svd", action="store_true")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(PAIRS),
        default=list(PAIRS),
        metavar="MODE",
        help=f"pemarith modes to measure (default: all of {', '.join(map(repr, PAIRS))})",
    )
    p.add_argument("--skip-peft", action="store_true", help="measure pemarith only")
    p.add_argument(
        "--weight",
        type=float,
        help="every module's coefficient (default 1/n; e.g. 0.3, whose products with the "
        "factors need float64, where 1/n for n a power of two does not)",
    )
    p.add_argument(
        "--peft-timeout",
        type=float,
        default=1200.0,
        help="kill a PEFT run after this many seconds and report lower bounds "
        "(default 1200; PEFT svd needed > 3300 s on 2 loaded cores)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype of the adapters (default float32)",
    )
    p.add_argument(
        "--peft-dtype",
        choices=["float32", "bfloat16"],
        help="dtype of PEFT's random base model (default: that of the adapters)",
    )
    p.add_argument(
        "--skip-floors",
        action="store_true",
        help="do not measure the copy floors (numpy + fsynced copy, cp -r)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: --modules 2 --repeats 1 --skip-peft-svd")
    p.add_argument(
        "--warm", action="store_true", help="do not evict the inputs from the page cache before each run"
    )
    p.add_argument("--workdir", type=Path, help="where adapters and outputs go (default: a tmp dir)")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--json", type=Path, help="also write every run as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.modules, args.repeats, args.skip_peft_svd = [2], 1, True
    if args.skip_peft_svd:
        args.peft_svd_modules = []
    args.peft_dtype = args.peft_dtype or args.dtype
    return args


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_peft":
        child = argparse.ArgumentParser()
        child.add_argument("_peft")
        child.add_argument("--combination", required=True)
        child.add_argument("--out", required=True)
        child.add_argument("--dtype", default="float32")
        child.add_argument("--weight", type=float, required=True)
        child.add_argument("adapters", nargs="+")
        peft_child(child.parse_args())
        return
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pemarith-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench(args, work)
    finally:
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def measure_all(
    args: argparse.Namespace, adapters: list[Path], files: list[Path], out: Path, runs: list[Run]
) -> None:
    """Every planned run, pemarith and PEFT alternating, appended to ``runs`` as it ends."""
    for rep in range(args.repeats):
        for n in args.modules:
            inputs = adapters[:n]
            for floor, cmd in (
                []
                if args.skip_floors
                else [("copy+fsync", copy_cmd(files[:n], out)), ("cp -r", cp_cmd(inputs, out))]
            ):
                shutil.rmtree(out, ignore_errors=True)
                if not args.warm:
                    evict(files[:n])
                wall, rss, _, _ = measure(cmd)
                runs.append(Run(floor, "floor", n, wall, rss))
                print(
                    f"  rep {rep + 1} n={n} {floor:27s} {wall:8.2f} s {rss:8.0f} MB  "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
            for pair in args.modes:
                plan = [("pemarith", None)]
                do_svd = n in args.peft_svd_modules and rep < args.peft_svd_repeats
                if not args.skip_peft and (PAIRS[pair][1] != "svd" or do_svd):
                    plan.append(("peft", args.peft_dtype))
                for tool, dtype in plan:
                    shutil.rmtree(out, ignore_errors=True)
                    if not args.warm:
                        evict(files[:n])
                    try:
                        if tool == "pemarith":
                            run = run_pemarith(pair, inputs, out, args.weight)
                        else:
                            run = run_peft(pair, inputs, out, dtype, args.peft_timeout, args.weight)
                    except ChildFailed as exc:
                        print(f"  rep {rep + 1} n={n} {tool:8s} {pair:16s} FAILED: {exc}")
                        continue
                    runs.append(run)
                    killed = (
                        "  (killed at --peft-timeout: lower bounds)" if run.detail.get("timed_out") else ""
                    )
                    print(
                        f"  rep {rep + 1} n={n} {tool:8s} {pair:16s} {run.wall_s:8.2f} s "
                        f"{run.max_rss_mb:8.0f} MB  load {os.getloadavg()[0]:.2f}{killed}",
                        flush=True,
                    )


def bench(args: argparse.Namespace, work: Path) -> None:
    n_max = max(args.modules)
    t = time.perf_counter()
    print(f"# uptime before: {uptime()}")
    print(precompile())
    load_before = os.getloadavg()[0]
    suffix = "" if args.dtype == "float32" else "-bf16"
    adapters = [work / f"adapter{i}{suffix}" for i in range(n_max)]
    for i, path in enumerate(adapters):
        if not (path / WEIGHTS).is_file():
            make_adapter(path, seed=i, dtype=args.dtype)
    files = [p / WEIGHTS for p in adapters]
    size = files[0].stat().st_size
    print(
        f"# {n_max} TinyLlama-shaped {args.dtype} LoRA adapters (r={RANK}, 7 targets x {LAYERS} layers, "
        f"{size / 1e6:.1f} MB each) in {work} ({time.perf_counter() - t:.1f} s)"
    )
    cold_bw = read_bandwidth(files, cold=True)
    warm_bw = read_bandwidth(files, cold=False)
    print(f"# read bandwidth of the inputs: cold-ish {cold_bw / 1e9:.2f} GB/s, warm {warm_bw / 1e9:.2f} GB/s")
    print(f"# cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start, niceness {os.nice(0)}")
    print(f"# each module's coefficient: {'1/n' if args.weight is None else repr(args.weight)}")

    runs: list[Run] = []
    out = work / "out"
    try:
        measure_all(args, adapters, files, out, runs)
    except KeyboardInterrupt:  # Ctrl-C: summarise what was measured so far
        print(f"# interrupted: summarising the {len(runs)} runs measured so far")
    shutil.rmtree(out, ignore_errors=True)

    floors = {}
    for n in args.modules:
        for pair in PAIRS:
            sizes = [
                r.detail["bytes_written"]
                for r in runs
                if r.tool == "pemarith" and r.pair == pair and r.modules == n
            ]
            if not sizes:
                continue
            written = median(sizes)
            moved = n * size + written
            floors[(pair, n)] = {"bytes": moved, "cold_s": moved / cold_bw, "warm_s": moved / warm_bw}
    print()
    print(
        f"# medians over {args.repeats} repeat(s); PEFT svd n as shown; "
        f"goals: exact >= 10x faster than PEFT cat with <= 1/4 of its peak memory; "
        f"exact --rank 16 >= 100x faster than PEFT svd with <= 1/10; "
        f"pemarith within {IO_FLOOR_GOAL:.0f}x of the I/O floor"
    )
    print(summarise(runs, floors))
    print()
    print(
        "# pemarith in-process time (SaveReport.seconds: no interpreter start-up or imports) "
        "and the I/O floor"
    )
    print(
        "| modules | mode | in-process s | bytes moved (MB) | floor cold s | floor warm s "
        "| in-process / cold floor | max SVD layer error |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (pair, n), fl in floors.items():
        ours = [r for r in runs if r.tool == "pemarith" and r.pair == pair and r.modules == n]
        inproc = median([r.detail["in_process_s"] for r in ours if r.detail["in_process_s"] is not None])
        err = ours[0].detail.get("max_layer_error")
        err_s = "-" if err is None else f"{err:.3g}"
        print(
            f"| {n} | {pair} | {inproc:.2f} | {fl['bytes'] / 1e6:.0f} | {fl['cold_s']:.2f} "
            f"| {fl['warm_s']:.3f} | {inproc / fl['cold_s']:.1f}x | {err_s} |"
        )
    if any(r.tool == "peft" for r in runs):
        print()
        print("# PEFT phases (median s)")
        print(phase_table(runs))
    if any(r.pair == "floor" for r in runs):
        print()
        print(floor_table(runs))
    print(f"# uptime after: {uptime()}")
    if busy(load_before, os.getloadavg()[0]):
        print("# LOADED: the load beyond this benchmark exceeded 1.0; do not publish these figures")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "weight": args.weight,
                    "cold_read_bytes_per_s": cold_bw,
                    "warm_read_bytes_per_s": warm_bw,
                    "floors": {f"{p}|{n}": v for (p, n), v in floors.items()},
                    "runs": [r.__dict__ for r in runs],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
