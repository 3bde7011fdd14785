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

Usage: `python benchmarks/bake_vs_peft.py [--repeats 3] [--base DIR] [--json FILE]`.
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

RANK, ALPHA = 16, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def target_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """``target -> (in_features, out_features)`` of a Llama-shaped model."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    head = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = head * config["num_attention_heads"], head * config.get("num_key_value_heads", config["num_attention_heads"])
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def make_adapter(path: Path, base: Path, seed: int = 0) -> None:
    from safetensors.numpy import save_file

    config = json.loads((base / "config.json").read_text())
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for target, (fan_in, fan_out) in target_shapes(config).items():
            parent = "self_attn" if target in TARGETS[:4] else "mlp"
            key = f"base_model.model.model.layers.{layer}.{parent}.{target}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((RANK, fan_in)) / fan_in ** 0.5).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((fan_out, RANK)) * 0.01).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base),
        "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(TARGETS), "fan_in_fan_out": False, "use_rslora": False}))


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
    """Max |difference| over the tensors both outputs hold, and the keys only one holds."""
    from safetensors import safe_open

    def tensors(d: Path) -> dict[str, tuple[Path, str]]:
        return {k: (f, k) for f in sorted(d.glob("*.safetensors"))
                for k in safe_open(str(f), "np").keys()}

    a, b = tensors(ours), tensors(theirs)
    worst = 0.0
    for key in sorted(set(a) & set(b)):
        with safe_open(str(a[key][0]), "np") as fa, safe_open(str(b[key][0]), "np") as fb:
            x, y = fa.get_tensor(key).astype(np.float64), fb.get_tensor(key).astype(np.float64)
        worst = max(worst, float(np.max(np.abs(x - y))) if x.size else 0.0)
    return {"common": len(set(a) & set(b)), "only_pemarith": sorted(set(a) - set(b)),
            "only_peft": sorted(set(b) - set(a)), "max_abs_diff": worst}


def default_base() -> Path:
    from pemarith.hf.models import resolve_model

    return Path(resolve_model("smollm2"))


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_peft":
        peft_child(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, help="a Llama-shaped checkpoint dir (default: packaged SmolLM2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per tool (median)")
    p.add_argument("--json", type=Path, help="also write every run and the comparison here")
    args = p.parse_args(argv)
    base = (args.base or default_base()).resolve()
    work = Path(tempfile.mkdtemp(prefix="pemarith-bake-bench-"))
    try:
        adapter = work / "adapter"
        make_adapter(adapter, base)
        print(f"# base {base} ({dir_bytes(base) / 1e6:.0f} MB); LoRA r={RANK} on {len(TARGETS)} targets "
              f"of every layer ({dir_bytes(adapter) / 1e6:.1f} MB)")
        print(f"# cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start, niceness {os.nice(0)}")
        runs: list[dict] = []
        for rep in range(args.repeats):
            for tool in ("pemarith", "peft"):
                out = work / f"out-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = ([*pemarith_cmd(), "bake", "--base", str(base), "-m", f"a={adapter}", "-o", str(out), "a"]
                       if tool == "pemarith" else
                       [sys.executable, os.path.abspath(__file__), "_peft", str(base), str(adapter), str(out)])
                try:
                    wall, rss, stdout, _ = measure(cmd)
                except ChildFailed as exc:
                    print(f"  rep {rep + 1} {tool:8s} FAILED: {exc}")
                    continue
                detail = json.loads(stdout.strip().splitlines()[-1]) if tool == "peft" else {}
                runs.append({"tool": tool, "wall_s": wall, "max_rss_mb": rss, "bytes_written": dir_bytes(out),
                             **detail})
                print(f"  rep {rep + 1} {tool:8s} {wall:8.2f} s {rss:8.0f} MB  load {os.getloadavg()[0]:.2f}",
                      flush=True)
        same = compare(work / "out-pemarith", work / "out-peft")
        med = {t: {k: statistics.median(r[k] for r in runs if r["tool"] == t) for k in ("wall_s", "max_rss_mb")}
               for t in ("pemarith", "peft") if any(r["tool"] == t for r in runs)}
        print()
        print(f"# medians over {args.repeats} repeat(s)")
        print("| tool | wall s | peak RSS MB |")
        print("|---|---|---|")
        for t, m in med.items():
            print(f"| {t} | {m['wall_s']:.2f} | {m['max_rss_mb']:.0f} |")
        if len(med) == 2:
            print(f"\nspeed-up {med['peft']['wall_s'] / med['pemarith']['wall_s']:.1f}x, memory ratio "
                  f"{med['pemarith']['max_rss_mb'] / med['peft']['max_rss_mb']:.3f} (pemarith / PEFT)")
            keys = ("import_s", "base_model_s", "load_adapter_s", "merge_s", "save_s")
            peft_runs = [r for r in runs if r["tool"] == "peft"]
            print("PEFT phases (median s): " + ", ".join(
                f"{k} {statistics.median(r[k] for r in peft_runs):.1f}" for k in keys))
        print(f"outputs: {same['common']} tensors in both, max |difference| {same['max_abs_diff']:.3g}; "
              f"only in pemarith's: {same['only_pemarith'] or 'none'}; only in PEFT's: {same['only_peft'] or 'none'}")
        if args.json:
            args.json.write_text(json.dumps({"base": str(base), "runs": runs, "medians": med,
                                             "comparison": same}, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
