"""Section 4.5's tables and plot (domain transfer by analogy), from the results of
:func:`pemarith.scenarios.domain_transfer.run`, beside the paper's figures (``PAPER``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..hf.plot import pyplot, save_png
from .distribution_report import settings_text
from .report import LABELS, group, seconds, table, task_label

TASK_LABELS = {"amazon": "Amazon", "yelp": "Yelp"}

#: Table 5 (test accuracy, %): size -> method -> target domain -> (source, merge, target);
#: a trailing True marks the paper's "*" on the merge.
PAPER: dict[str, dict[str, dict[str, tuple]]] = {
    "T5-base": {
        "full": {"yelp": (97.34, 97.36, 97.74, False), "amazon": (94.87, 94.87, 96.48, False)},
        "lora": {"yelp": (97.05, 97.31, 97.37, True), "amazon": (94.50, 94.50, 95.91, False)},
        "ia3": {"yelp": (97.25, 97.27, 97.09, False), "amazon": (94.11, 94.10, 96.11, False)},
    },
    "T5-small": {
        "full": {"yelp": (95.86, 95.80, 96.34, False), "amazon": (91.44, 91.43, 95.19, False)},
        "lora": {"yelp": (94.76, 95.83, 96.82, True), "amazon": (91.03, 91.94, 95.09, True)},
        "ia3": {"yelp": (94.82, 95.30, 96.27, True), "amazon": (90.55, 91.31, 94.02, False)},
    },
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def main_table(results: Mapping[str, Any]) -> str:
    """Table 5's shape: per target test set, source / merge / target (ours; test accuracy, %)."""
    cells = results["cells"]
    alpha = results["recipe"]["options"].get("alpha", 0.05)
    targets = list(dict.fromkeys(c["target"] for c in cells))
    header = ["method"]
    for t in targets:
        lab = TASK_LABELS.get(t, t)
        header += [f"{lab} test: source", "merge (λ on source val)", "merge (λ on target val)", "target"]
    rows = []
    by = group(cells, "method", "mode")
    for (method, mode), cs in sorted(
        by.items(), key=lambda kv: (("lora", "ia3", "full").index(kv[0][0]), kv[0][1] != "factorwise")
    ):
        line = [LABELS[method] + (" exact" if mode == "exact" else "")]
        for t in targets:
            tc = [c for c in cs if c["target"] == t]
            if not tc:
                line += ["-"] * 4
                continue
            c = tc[0]  # one seed in the recipes; several seeds would be rows of their own
            star = {k: "*" if v["p"] < alpha else "" for k, v in c["mcnemar"].items()}
            line += [
                _pct(c["test"]["source"]),
                f"{_pct(c['test']['merge'])}{star.get('merge', '')}",
                f"{_pct(c['test'].get('merge_targetval'))}{star.get('merge_targetval', '')}"
                if c["test"].get("merge_targetval") is not None
                else "-",
                _pct(c["test"]["target"]),
            ]
        rows.append(line)
    return table(header, rows, "l" + "r" * (len(header) - 1))


def paper_table() -> str:
    """Table 5 as printed (T5-base and T5-small)."""
    rows = []
    for size, by_method in PAPER.items():
        for method, by_t in by_method.items():
            line = [size, LABELS[method]]
            for t in ("yelp", "amazon"):
                src, merge, target, star = by_t[t]
                line += [f"{src:.2f}", f"{merge:.2f}{'*' if star else ''}", f"{target:.2f}"]
            rows.append(line)
    return table(
        ["model", "method", "Yelp test: source", "merge", "target", "Amazon test: source", "merge", "target"],
        rows,
        "llrrrrrr",
    )


def detail_table(results: Mapping[str, Any]) -> str:
    """Lambdas, McNemar counts and p-values per cell."""
    rows = []
    for c in results["cells"]:
        for k, t in c["mcnemar"].items():
            lam = c["lambda"] if k == "merge" else c["lambda_targetval"]
            rows.append(
                [
                    f"{task_label(c['source'])} -> {task_label(c['target'])}",
                    LABELS[c["method"]] + (" exact" if c["mode"] == "exact" else ""),
                    c["seed"],
                    "source val" if k == "merge" else "target val",
                    f"{lam:g}",
                    t["b"],
                    t["c"],
                    f"{t['p']:.3g}",
                    c["n_test"],
                ]
            )
    return table(
        [
            "direction",
            "method",
            "seed",
            "lambda chosen on",
            "lambda",
            "b (source right, merge wrong)",
            "c (source wrong, merge right)",
            "McNemar exact p",
            "test rows",
        ],
        rows,
        "llrlrrrrr",
    )


def timing_table(results: Mapping[str, Any]) -> str:
    rows = []
    for method, cs in group(results["cells"], "method").items():
        wall = {c["modules"][n]: s for c in cs for n, s in c["train_seconds"].items() if s}
        cpu = {c["modules"][n]: s for c in cs for n, s in c["train_cpu_seconds"].items() if s}
        sweeps = [c["sweep_seconds"] for c in cs if c.get("sweep_seconds")]
        rows.append(
            [
                LABELS[method[0]],
                len(wall),
                seconds(sum(wall.values())),
                seconds(sum(cpu.values())) if cpu else "-",
                seconds(sum(sweeps) / len(sweeps)) if sweeps else "-",
            ]
        )
    return table(
        ["method", "modules", "training, all modules (wall)", "(CPU)", "sweep per merge (wall)"],
        rows,
        "lrrrr",
    )


def options_text(results: Mapping[str, Any]) -> str:
    o = results["recipe"]["options"]
    frag = ", ".join(f"{task_label(d)} {n}" for d, n in results.get("fragments", {}).items())
    target = (
        f"; reference choice on {o['target_val_limit']} labelled target validation rows"
        if o["target_val_limit"]
        else ""
    )
    return (
        f"- LM modules: review sentences of each train split joined and cut into "
        f"{o['chunk_tokens']}-token fragments ({frag} fragments); lambda chosen on "
        f"{o['val_limit']} source validation rows (no target labels){target}; test rows per "
        f"target: {o['test_limit'] or 'all (1000)'}; `*`: exact McNemar p < {o['alpha']} "
        f"against the source classifier"
    )


def sections(results: Mapping[str, Any]) -> dict[str, str]:
    if not results.get("cells"):
        return {"settings": settings_text(results), "table": "(no finished cells yet)"}
    return {
        "settings": settings_text(results) + "\n" + options_text(results),
        "table": main_table(results),
        "tests": detail_table(results),
        "paper": paper_table(),
        "timing": timing_table(results),
    }


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Like Figure 7: validation accuracy of the merge against lambda, per direction."""
    plt = pyplot()

    cells = results.get("cells", [])
    dirs = list(dict.fromkeys(c["direction"] for c in cells))
    if not dirs:
        return []
    fig, axes = plt.subplots(1, len(dirs), figsize=(4.8 * len(dirs), 3.6), squeeze=False)
    for ax, d in zip(axes[0], dirs):
        for c in [c for c in cells if c["direction"] == d]:
            name = f"{LABELS[c['method']]}{' exact' if c['mode'] == 'exact' else ''}"
            xs = [p[0] for p in c["curve"]]
            ax.plot(
                xs,
                [p[1] for p in c["curve"]],
                marker="o",
                markersize=3,
                label=f"{name}: {c['source']} val (source)",
            )
            if any(p[2] is not None for p in c["curve"]):
                ax.plot(
                    xs,
                    [p[2] for p in c["curve"]],
                    linestyle="--",
                    marker="x",
                    markersize=3,
                    label=f"{name}: {c['target']} val (target)",
                )
        ax.set_title(f"{d} (merge = l*cls + (1-l)*(lm_t - lm_s))", fontsize=8)
        ax.set_xlabel("lambda")
        ax.set_ylabel("accuracy (validation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = save_png(fig, out / "domain_transfer.png")
    return [path]
