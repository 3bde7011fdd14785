"""Benchmark: `pemarith bake` against PEFT's `merge_and_unload` + `save_pretrained`, end to end.

Merging a LoRA into a real base checkpoint for deployment. The base is the packaged
SmolLM2-135M-Instruct (converted once to `model.safetensors`, float32, 538 MB; `--base DIR` for
another Llama-shaped checkpoint); the adapter is a synthetic LoRA on q, k, v, o, gate, up, down
of every layer (r=16), shaped from the base's config.json and written directly with safetensors.

    pemarith   pemarith bake --base BASE -m a=ADAPTER -o OUT a
    PEFT       AutoModelForCausalLM.from_pretrained(BASE) -> PeftModel.from_pretrained(ADAPTER)
               -> merge_and_unload() -> save_pretrained(OUT)

Each measurement is one fresh process, timed from spawn to exit, peak RSS from GNU time (the
`measure` of compose_vs_peft.py); the two tools alternate and medians over --repeats are
printed. After the runs the two outputs are compared tensor by tensor (max |difference|), so
the ratio is between two programs that write the same model.

Floors, measured the same way in the same alternation (benchmarks/floors.py): a Python process
that imports numpy and copies the base with every file fsynced (no reflinks), and `cp -r`.
`--dtype bfloat16` first converts the base and the adapter to bfloat16 (the everyday case).
The `uptime` line is printed before and after; a run on a loaded machine says so.

Usage: `python benchmarks/bake_vs_peft.py [--repeats 5] [--dtype bfloat16] [--base DIR] [--skip-peft]
[--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_vs_peft import ChildFailed, dir_bytes, measure, pemarith_cmd  # noqa: E402
from floors import busy, copy_cmd, cp_cmd, precompile, uptime

RANK, ALPHA = 16, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def target_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """``target -> (in_features, out_features)`` of a Llama-shaped model."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    head = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = (
        head * config["num_attention_heads"],
        head * config.get("num_key_value_heads", config["num_attention_heads"]),
    )
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def to_bfloat16(base: Path, out: Path) -> Path:
    """A copy of the checkpoint directory ``base`` with every float tensor in bfloat16 (rounded
    on the bits by pemarith.dtypes; other tensors byte for byte), ``torch_dtype`` set."""
    from pemarith.bake_base import base_shards
    from pemarith.dtypes import STORED, decode
    from pemarith.io import SafetensorsWriter, read_bytes

    out.mkdir(parents=True)
    infos, metas, _ = base_shards(base)
    for item in base.iterdir():
        if item.is_file() and item.name not in infos:
            shutil.copy2(item, out / item.name)
    for shard, keys in infos.items():
        code = {k: "BF16" if i.dtype in STORED else i.dtype for k, i in keys.items()}
        writer = SafetensorsWriter(
            out / shard, [(k, code[k], i.shape) for k, i in keys.items()], {**metas[shard], "format": "pt"}
        )
        for k, i in keys.items():
            raw = read_bytes(base / shard, i, k)
            if i.dtype in STORED:
                writer.write(k, decode(raw, i.dtype, i.shape))
            else:
                writer.write_bytes(k, raw)
        writer.close()
    config = out / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "torch_dtype": "bfloat16"}))
    return out


def make_adapter(path: Path, base: Path, seed: int = 0, dtype: str = "float32") -> None:
    from safetensors.numpy import save_file

    if dtype == "bfloat16":
        from compose_vs_peft import _save_bf16 as save_file

    config = json.loads((base / "config.json").read_text())
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for target, (fan_in, fan_out) in target_shapes(config).items():
            parent = "self_attn" if target in TARGETS[:4] else "mlp"
            key = f"base_model.model.model.layers.{layer}.{parent}.{target}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((RANK, fan_in)) / fan_in**0.5).astype(
                np.float32
            )
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((fan_out, RANK)) * 0.01).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(base),
                "r": RANK,
                "lora_alpha": ALPHA,
                "lora_dropout": 0.0,
                "bias": "none",
                "target_modules": list(TARGETS),
                "fan_in_fan_out": False,
                "use_rslora": False,
            }
        )
    )


def peft_child(base: str, adapter: str, out: str) -> None:
    """PEFT's merge for deployment, as a user would run it; prints its phase times."""
    t0 = time.perf_counter()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    phases = {"import_s": time.perf_counter() - t0}
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base)
    phases["base_model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model = PeftModel.from_pretrained(model, adapter)
    phases["load_adapter_s"] = time.perf_counter() - t
    t = time.perf_counter()
    merged = model.merge_and_unload()
    phases["merge_s"] = time.perf_counter() - t
    t = time.perf_counter()
    merged.save_pretrained(out)
    phases["save_s"] = time.perf_counter() - t
    print(json.dumps(phases))


def compare(ours: Path, theirs: Path) -> dict:
    """Max |difference| over the float tensors both outputs hold (bfloat16 included, read with
    pemarith.dtypes), and the keys only one holds."""
    from pemarith.dtypes import STORED, decode
    from pemarith.io import read_bytes, read_safetensors_header

    def tensors(d: Path) -> dict:
        return {
            k: (f, i)
            for f in sorted(d.glob("*.safetensors"))
            for k, i in read_safetensors_header(f, any_dtype=True)[0].items()
        }

    def value(f: Path, info, key: str) -> np.ndarray:
        raw = read_bytes(f, info, key)
        if info.dtype in STORED:
            return decode(raw, info.dtype, info.shape).astype(np.float64)
        return np.frombuffer(raw, np.uint8).astype(np.float64)

    a, b = tensors(ours), tensors(theirs)
    worst = 0.0
    for key in sorted(set(a) & set(b)):
        x, y = value(*a[key], key), value(*b[key], key)
        if x.shape != y.shape:
            worst = float("inf")
            continue
        worst = max(worst, float(np.max(np.abs(x - y))) if x.size else 0.0)
    return {
        "common": len(set(a) & set(b)),
        "only_pemarith": sorted(set(a) - set(b)),
        "only_peft": sorted(set(b) - set(a)),
        "max_abs_diff": worst,
    }


def default_base() -> Path:
    from pemarith.hf.models import resolve_model

    return Path(resolve_model("smollm2"))


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_peft":
        peft_child(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, help="a Llama-shaped checkpoint dir (default: packaged SmolLM2)")
    p.add_argument("--repeats", type=int, default=5, help="runs per tool (median; default 5)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="bfloat16: convert the base (and the adapter) to bfloat16 first",
    )
    p.add_argument("--skip-peft", action="store_true", help="pemarith and the floors only")
    p.add_argument("--json", type=Path, help="also write every run and the comparison here")
    args = p.parse_args(argv)
    print(f"# uptime before: {uptime()}")
    print(precompile())
    load_before = os.getloadavg()[0]
    base = (args.base or default_base()).resolve()
    work = Path(tempfile.mkdtemp(prefix="pemarith-bake-bench-"))
    try:
        if args.dtype == "bfloat16":
            base = to_bfloat16(base, work / "base-bf16")
        adapter = work / "adapter"
        make_adapter(adapter, base, dtype=args.dtype)
        base_dtype = json.loads((base / "config.json").read_text()).get("torch_dtype", "?")
        print(
            f"# {base_dtype} base {base} ({dir_bytes(base) / 1e6:.0f} MB); LoRA r={RANK} on {len(TARGETS)} targets "
            f"of every layer ({args.dtype}, {dir_bytes(adapter) / 1e6:.1f} MB)"
        )
        print(
            f"# cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start, niceness {os.nice(0)}"
        )
        runs: list[dict] = []
        tools = ("copy+fsync", "cp -r", "pemarith") + (() if args.skip_peft else ("peft",))
        for rep in range(args.repeats):
            for tool in tools:
                out = work / f"out-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = {
                    "pemarith": [
                        *pemarith_cmd(),
                        "bake",
                        "--base",
                        str(base),
                        "-m",
                        f"a={adapter}",
                        "-o",
                        str(out),
                        "a",
                    ],
                    "peft": [
                        sys.executable,
                        os.path.abspath(__file__),
                        "_peft",
                        str(base),
                        str(adapter),
                        str(out),
                    ],
                    "copy+fsync": copy_cmd([base], out),
                    "cp -r": cp_cmd([base], out),
                }[tool]
                try:
                    wall, rss, stdout, _ = measure(cmd)
                except ChildFailed as exc:
                    print(f"  rep {rep + 1} {tool:8s} FAILED: {exc}")
                    continue
                detail = json.loads(stdout.strip().splitlines()[-1]) if tool == "peft" else {}
                runs.append(
                    {
                        "tool": tool,
                        "wall_s": wall,
                        "max_rss_mb": rss,
                        "bytes_written": dir_bytes(out),
                        **detail,
                    }
                )
                print(
                    f"  rep {rep + 1} {tool:10s} {wall:8.2f} s {rss:8.0f} MB  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        same = compare(work / "out-pemarith", work / "out-peft") if not args.skip_peft else None
        med = {
            t: {k: statistics.median(r[k] for r in runs if r["tool"] == t) for k in ("wall_s", "max_rss_mb")}
            for t in tools
            if any(r["tool"] == t for r in runs)
        }
        print()
        print(f"# medians over {args.repeats} repeat(s)")
        print("| tool | wall s | peak RSS MB |")
        print("|---|---|---|")
        for t, m in med.items():
            print(f"| {t} | {m['wall_s']:.2f} | {m['max_rss_mb']:.0f} |")
        for floor in ("copy+fsync", "cp -r"):
            if floor in med and "pemarith" in med:
                print(f"pemarith / {floor}: {med['pemarith']['wall_s'] / med[floor]['wall_s']:.2f}x")
        if "peft" in med and "pemarith" in med:
            print(
                f"\nspeed-up {med['peft']['wall_s'] / med['pemarith']['wall_s']:.1f}x, memory ratio "
                f"{med['pemarith']['max_rss_mb'] / med['peft']['max_rss_mb']:.3f} (pemarith / PEFT)"
            )
            keys = ("import_s", "base_model_s", "load_adapter_s", "merge_s", "save_s")
            peft_runs = [r for r in runs if r["tool"] == "peft"]
            print(
                "PEFT phases (median s): "
                + ", ".join(f"{k} {statistics.median(r[k] for r in peft_runs):.1f}" for k in keys)
            )
        if same is not None:
            print(
                f"outputs: {same['common']} tensors in both, max |difference| {same['max_abs_diff']:.3g}; "
                f"only in pemarith's: {same['only_pemarith'] or 'none'}; "
                f"only in PEFT's: {same['only_peft'] or 'none'}"
            )
        if args.json:
            args.json.write_text(
                json.dumps({"base": str(base), "runs": runs, "medians": med, "comparison": same}, indent=2)
                + "\n"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# uptime after: {uptime()}")
    if busy(load_before, os.getloadavg()[0]):
        print("# LOADED: the load beyond this benchmark exceeded 1.0; do not publish these figures")


if __name__ == "__main__":
    main()
