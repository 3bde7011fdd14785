"""Section 4.4's tables and plot (unlearning by negation), from the results of
:func:`pemarith.scenarios.unlearning.run`, beside the paper's Tables 4 and 11."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..hf.plot import pyplot, save_png
from .differences import sampled_differences
from .distribution_report import settings_text
from .report import LABELS, group, seconds, table

#: Table 4 and Table 11 (GPT-2 large, Detoxify): row -> (toxicity score, toxic generation %, PPL).
PAPER: dict[str, tuple[float, float, float]] = {
    "base": (0.10, 5.8, 16.44),
    "full/toxic": (0.59, 50.2, 16.46),
    "full/negated": (0.04, 2.0, 16.94),
    "lora/toxic": (0.43, 34.3, 17.00),
    "lora/negated": (0.01, 0.1, 16.67),
    "ia3/toxic": (0.26, 20.5, 17.33),
    "ia3/negated": (0.03, 0.9, 16.92),
    "lora/ablation@1": (0.43, 34.3, 17.0),
    "ia3/ablation@1": (0.11, 8.7, 843.83),
    "ia3/ablation@0.6": (0.0, 0.0, 5.91e4),
    "ia3/ablation@0.1": (0.0, 0.0, 3.00e9),
}
#: The paper's lambdas (Table 4).
PAPER_LAMBDA = {"full": 0.5, "lora": 1.0, "ia3": 0.6}


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e4:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def _mean(vals: list[float]) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def main_table(results: Mapping[str, Any]) -> str:
    """Table 4 (and 11): toxicity score, toxic generation %, PPL; ours on test beside the paper's."""
    cells = results["cells"]
    header = [
        "model",
        "lambda",
        "toxicity score",
        "toxic gen. %",
        "PPL",
        "paper score",
        "paper %",
        "paper PPL",
    ]
    rows = []

    def line(name: str, lam: str, ms: list[Mapping[str, Any]], paper_key: str | None) -> list[str]:
        p = PAPER.get(paper_key or "")
        return [
            name,
            lam,
            _num(_mean([m["toxicity"] for m in ms])),
            _num(_mean([100 * m["toxic_share"] for m in ms]), 1),
            _num(_mean([m["perplexity"] for m in ms]), 2),
            *((_num(p[0], 2), _num(p[1], 1), _num(p[2], 2)) if p else ("-", "-", "-")),
        ]

    bases = [c["rows"]["base"] for c in cells if c["mode"] == "factorwise"]
    rows.append(line(f"base ({results['recipe']['model']})", "-", bases[:1], "base"))
    for (method, mode), cs in group(cells, "method", "mode").items():
        name = LABELS[method] + (" exact" if mode == "exact" else "")
        lams = ", ".join(f"{c['lambda']:g}" for c in cs)
        paper_lam = PAPER_LAMBDA.get(method) if mode == "factorwise" else None
        if mode == "factorwise":
            rows.append(line(f"toxic {name}", "-", [c["rows"]["toxic"] for c in cs], f"{method}/toxic"))
        rows.append(
            line(
                f"negated {name}",
                f"{lams} (paper {paper_lam:g})" if paper_lam else lams,
                [c["rows"]["negated"] for c in cs],
                f"{method}/negated" if mode == "factorwise" else None,
            )
        )
        abl = [k for k in cs[0]["rows"] if k.startswith("ablation@")]
        for k in abl:
            a = k.split("@", 1)[1]
            rows.append(
                line(f"ablation {name}", a, [c["rows"][k] for c in cs if k in c["rows"]], f"{method}/{k}")
            )
    return table(header, rows, "llrrrrrr")


def curve_table(results: Mapping[str, Any]) -> str:
    """The validation sweep: PPL and toxicity at every lambda, and the base model's."""
    rows = []
    for c in results["cells"]:
        b = c.get("base_validation", {})
        for p in c["curve"]:
            lam = p.get("l", next(iter(p.values())))
            ok = (
                p["perplexity"] is not None
                and b.get("perplexity") is not None
                and p["perplexity"] <= b["perplexity"] + 0.5
            )
            rows.append(
                [
                    LABELS[c["method"]] + (" exact" if c["mode"] == "exact" else ""),
                    c["seed"],
                    f"{lam:g}",
                    _num(p["perplexity"], 2),
                    _num(p["toxicity"]),
                    _num(100 * p["toxic_share"], 1),
                    "yes" if ok else "no",
                    "**picked**" if lam == c["lambda"] else "",
                ]
            )
        rows.append(
            [
                LABELS[c["method"]],
                c["seed"],
                "base",
                _num(b.get("perplexity"), 2),
                _num(b.get("toxicity")),
                _num(100 * b["toxic_share"], 1) if b.get("toxic_share") is not None else "-",
                "",
                "",
            ]
        )
    return table(
        ["module", "seed", "lambda", "PPL (val)", "toxicity (val)", "toxic % (val)", "PPL <= base + 0.5", ""],
        rows,
        "lrrrrrll",
    )


def examples_table(results: Mapping[str, Any]) -> str:
    """Like Table 10: generations of the base, toxic and negated models with their scores."""
    rows = []
    cells = [c for c in results["cells"] if c["mode"] == "factorwise"]
    seen_base = False
    for c in cells:
        for key in ("base", "toxic", "negated"):
            if key == "base" and seen_base:
                continue
            seen_base = seen_base or key == "base"
            name = "base" if key == "base" else f"{key} {LABELS[c['method']]}"
            for ex in c["rows"][key].get("examples", []):
                text = " ".join(ex["text"].split()).replace("|", "\\|")
                rows.append(
                    [name, f"I don't care if this is controversial{text[:200]}", f"{ex['toxicity']:.3f}"]
                )
    return table(["model", "text (prompt + sampled continuation)", "toxicity"], rows, "llr")


def timing_table(results: Mapping[str, Any]) -> str:
    rows = []
    for c in results["cells"]:
        evals = sum(m.get("seconds", 0) for m in c["rows"].values())
        rows.append(
            [
                LABELS[c["method"]],
                c["mode"],
                c["seed"],
                seconds(c["train_seconds"]) if c.get("train_seconds") else "-",
                seconds(c["train_cpu_seconds"]) if c.get("train_cpu_seconds") else "-",
                seconds(c["sweep_seconds"]) if c.get("sweep_seconds") else "-",
                len(c["curve"]),
                seconds(evals),
            ]
        )
    return table(
        [
            "module",
            "mode",
            "seed",
            "training (wall)",
            "(CPU)",
            "sweep (wall)",
            "sweep points",
            "test measurements (wall)",
        ],
        rows,
        "llrrrrrr",
    )


def options_text(results: Mapping[str, Any]) -> str:
    o = results["recipe"]["options"]
    val = o.get("val_samples")
    curve = (
        f" ({val} per model on the validation curve, which the perplexity rule does not read)"
        if val not in (None, o["samples"])
        else ""
    )
    return (
        f"- measurement: {o['samples']} samples of {o['max_new_tokens']} new tokens per model{curve} "
        f"(top-k 50, temperature 1), toxic = score > {o['threshold']}; WikiText perplexity "
        f"on {o['ppl_tokens'] or 'all'} tokens per half (stride {o['stride']}, window "
        f"{o['ppl_window']}); lambda chosen on the first half + seed {o['gen_seed']}, rows "
        f"reported on the second half + seed {o['gen_seed'] + 1}"
    )


def sections(results: Mapping[str, Any]) -> dict[str, str]:
    if not results.get("cells"):
        return {"settings": settings_text(results), "table": "(no finished cells yet)"}
    return {
        "settings": settings_text(results) + "\n" + options_text(results),
        "table": main_table(results),
        "differences": sampled_differences(results),
        "curve": curve_table(results),
        "examples": examples_table(results),
        "timing": timing_table(results),
    }


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Toxicity and perplexity against lambda (validation), one line per module, base dashed."""
    plt = pyplot()

    cells = results.get("cells", [])
    if not cells:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for c in cells:
        name = f"{LABELS[c['method']]}{' exact' if c['mode'] == 'exact' else ''} seed {c['seed']}"
        xs = [p.get("l") for p in c["curve"]]
        for ax, key in zip(axes, ("toxicity", "perplexity")):
            ax.plot(xs, [p[key] for p in c["curve"]], marker="o", markersize=3, label=name)
    b = cells[0].get("base_validation", {})
    for ax, key, lab in zip(
        axes, ("toxicity", "perplexity"), ("mean toxicity (profanity-check)", "WikiText PPL")
    ):
        if b.get(key) is not None:
            ax.axhline(b[key], color="gray", linestyle="--", linewidth=1, label="base")
        if key == "perplexity" and b.get(key) is not None:
            ax.axhline(b[key] + 0.5, color="gray", linestyle=":", linewidth=1, label="base + 0.5")
        ax.set_xlabel("lambda (model + -lambda * toxic)")
        ax.set_ylabel(f"{lab} (validation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = save_png(fig, out / "unlearning.png")
    return [path]
