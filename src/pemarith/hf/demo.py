"""The end-to-end demo: composition for distribution generalisation on SST-2, on a laptop CPU.

Two LoRA modules of MiniLM are trained from the same initialisation (``init_seed``) on the two
label-skewed subsets of SST-2's train split (Appendix B: s0 has 80% of one class, s1 the rest),
then composed as ``0.5*s0 + 0.5*s1`` by the model-free core, and the three are evaluated on the
validation split. The paper's claim is that the composition beats each single module (and their
average) because it sees both distributions. Sizes are chosen to finish in a few minutes on two
cores: 1000 rows per subset as the paper, but a few hundred steps instead of thousands.

Outputs under ``out`` (default ``runs/demo``): ``s0/``, ``s1/`` (adapters + training.json),
``merged/`` (the composition) and ``results.json``. A rerun skips finished modules.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "out": "runs/demo",
    "model": "minilm",
    "task": "sst2",
    "steps": 200,
    "subset_size": 1000,
    "batch_size": 16,
    "max_length": 64,
    "lr": 2e-3,
    "init_seed": 0,
    "subset_seed": 0,
    "expr": "0.5*s0 + 0.5*s1",
}


def _finished(path: Path) -> bool:
    return (path / "training.json").is_file() and (path / "adapter_config.json").is_file()


def run_demo(
    out: str | Path = DEFAULTS["out"],
    data_dir: str | Path | None = None,
    model: str = DEFAULTS["model"],
    steps: int = DEFAULTS["steps"],
    subset_size: int = DEFAULTS["subset_size"],
    split_seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo (see the module docstring); print and return the scores."""
    import pemarith

    from .data import load_split, resolve_data_dir
    from .evaluate import evaluate
    from .skew import class_counts, skewed_subsets
    from .tasks import get_task
    from .train import TrainConfig, train

    start = time.perf_counter()
    out = Path(out)
    data_dir = resolve_data_dir(data_dir)
    task = DEFAULTS["task"]
    subsets = skewed_subsets(
        load_split(task, "train", data_dir=data_dir, seed=split_seed),
        seed=DEFAULTS["subset_seed"],
        size=subset_size,
    )
    print(
        f"pemarith demo: {model} + LoRA on the two label-skewed halves of SST-2 "
        f"({subset_size} rows each), shared init seed {DEFAULTS['init_seed']}; data {data_dir}"
    )
    names = get_task(task).label_names
    counts = {}
    for i, name in enumerate(("s0", "s1")):
        counts[name] = class_counts(subsets[i])
        path = out / name
        shown = " / ".join(f"{n} {names[c]}" for c, n in sorted(counts[name].items()))
        if _finished(path):
            print(f"[{name}] {shown}: already trained in {path}, skipping")
            continue
        print(f"[{name}] {shown}: training {steps} steps")
        train(
            TrainConfig(
                model=model,
                task=task,
                output_dir=path,
                peft_type="lora",
                r=8,
                alpha=16,
                init_seed=DEFAULTS["init_seed"],
                seed=i,
                steps=steps,
                lr=DEFAULTS["lr"],
                batch_size=DEFAULTS["batch_size"],
                max_length=DEFAULTS["max_length"],
                split_seed=split_seed,
                data_dir=data_dir,
                subset=f"skew{i}",
                subset_seed=DEFAULTS["subset_seed"],
                subset_size=subset_size,
                overwrite=True,
                progress=progress,
            )
        )
    pem = pemarith.compose(DEFAULTS["expr"], {"s0": out / "s0", "s1": out / "s1"})
    pem.save(out / "merged", force=True)
    print(f"[merged] {DEFAULTS['expr']} -> {out / 'merged'}")
    scores: dict[str, float] = {}
    for name in ("s0", "s1", "merged"):
        res = evaluate(
            model,
            task,
            "validation",
            adapter=out / name,
            data_dir=data_dir,
            split_seed=split_seed,
            limit=limit,
            progress=progress,
            max_length=DEFAULTS["max_length"],
        )
        scores[name] = res["metrics"]["accuracy"]
        n = res["n"]
    scores["average"] = (scores["s0"] + scores["s1"]) / 2
    seconds = round(time.perf_counter() - start, 1)
    print(f"\nSST-2 validation accuracy ({n} rows):")

    def skew(name: str) -> str:
        return "/".join(str(n) for _, n in sorted(counts[name].items()))

    rows = [
        ("s0", f"s0 (train classes {skew('s0')})"),
        ("s1", f"s1 (train classes {skew('s1')})"),
        ("average", "average of s0 and s1"),
        ("merged", f"{DEFAULTS['expr']} (composed)"),
    ]
    width = max(len(label) for _, label in rows)
    for key, label in rows:
        print(f"  {label.ljust(width)}  {scores[key]:.4f}")
    gain = scores["merged"] - scores["average"]
    print(f"composition vs. the modules' average: {gain:+.4f}   ({seconds:.0f} s in all)")
    result = {
        "scores": scores,
        "rows": n,
        "class_counts": {k: {str(c): v for c, v in d.items()} for k, d in counts.items()},
        "settings": {
            **DEFAULTS,
            "out": str(out),
            "model": model,
            "steps": steps,
            "subset_size": subset_size,
            "split_seed": split_seed,
        },
        "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
