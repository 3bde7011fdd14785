"""Section 4.6's tables and plot (detoxifying an instruction-tuned model), from the results of
:func:`pemarith.scenarios.detox_instruct.run`, beside the paper's figures (``PAPER``,
``PAPER_LAMBDA``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..hf.plot import pyplot, save_png
from .differences import paired_differences
from .distribution_report import settings_text
from .report import seconds, table

#: Table 6 (Alpaca-LoRA, Detoxify, GPT-4): row -> (tox toxic, tox normal, % toxic, % normal,
#: helpfulness toxic, helpfulness normal).
PAPER: dict[str, tuple[float, ...]] = {
    "t1": (0.321, 0.008, 20, 0, 6.85, 7.87),
    "merge": (0.158, 0.008, 6, 0, 7.13, 7.63),
}

PAPER_LAMBDA = 0.4


def main_table(results: Mapping[str, Any]) -> str:
    """Table 6's shape (test instructions): toxicity and toxic share on toxic / normal
    instructions, and the helpfulness stand-in, ours beside the paper's."""
    header = [
        "model",
        "lambda",
        "toxicity: toxic",
        "normal",
        "toxic %: toxic",
        "normal",
        "empty %: toxic",
        "normal",
        "ref. NLL (normal) ↓",
        "paper tox.: toxic",
        "normal",
        "paper %: toxic",
        "normal",
        "paper GPT-4 help.: toxic",
        "normal",
    ]
    rows = []
    for c in results["cells"]:
        names = {
            "base": f"base ({results['recipe']['model']}, no adapter)",
            "t1": "t1 (benign LoRA)",
            "toxic": "t_toxic",
            "merge": "detoxified merge (rule's lambda)",
        }
        names.update({k: "merge at a fixed lambda" for k in c["rows"] if k.startswith("merge@")})
        for key, name in names.items():
            m = c["rows"][key]
            fixed = float(key.split("@")[1]) if key.startswith("merge@") else None
            # the paper's merge row is at its lambda: beside our row at that lambda when we have one
            paper_row_here = (
                fixed == PAPER_LAMBDA if f"merge@{PAPER_LAMBDA:g}" in c["rows"] else key == "merge"
            )
            p = PAPER["merge"] if paper_row_here else None if key.startswith("merge") else PAPER.get(key)
            lam = (
                f"{c['lambda']:g} (paper {PAPER_LAMBDA:g})"
                if key == "merge"
                else f"{fixed:g} (fixed)"
                if fixed is not None
                else "-"
            )
            rows.append(
                [
                    name,
                    lam,
                    f"{m['toxicity_toxic']:.3f}",
                    f"{m['toxicity_normal']:.3f}",
                    f"{100 * m['toxic_share_toxic']:.0f}",
                    f"{100 * m['toxic_share_normal']:.0f}",
                    _pct(m.get("empty_toxic")),
                    _pct(m.get("empty_normal")),
                    f"{m['nll_normal']:.3f}",
                    *(
                        (f"{p[0]:.3f}", f"{p[1]:.3f}", f"{p[2]:g}", f"{p[3]:g}", f"{p[4]:.2f}", f"{p[5]:.2f}")
                        if p
                        else ["-"] * 6
                    ),
                ]
            )
    return table(header, rows, "ll" + "r" * 13)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def curve_table(results: Mapping[str, Any]) -> str:
    rows = []
    for c in results["cells"]:
        for p in c["curve"]:
            lam = p.get("l")
            rows.append(
                [
                    c["seed"],
                    f"{lam:g}",
                    f"{p['toxicity_toxic']:.3f}",
                    f"{100 * p['toxic_share_toxic']:.0f}",
                    f"{p['toxicity_normal']:.3f}",
                    _pct(p.get("empty_toxic")),
                    _pct(p.get("empty_normal")),
                    f"{p['nll_normal']:.4f}",
                    "**picked**" if lam == c["lambda"] else "",
                ]
            )
        b = c.get("base_validation", {})
        if b:
            rows.append(
                [
                    c["seed"],
                    "base",
                    f"{b['toxicity_toxic']:.3f}",
                    f"{100 * b['toxic_share_toxic']:.0f}",
                    f"{b['toxicity_normal']:.3f}",
                    _pct(b.get("empty_toxic")),
                    _pct(b.get("empty_normal")),
                    f"{b['nll_normal']:.4f}",
                    "",
                ]
            )
    note = "; ".join(f"seed {c['seed']}: `{c['rule']}`" for c in results["cells"])
    return (
        table(
            [
                "seed",
                "lambda",
                "toxicity: toxic (val)",
                "toxic %: toxic",
                "toxicity: normal",
                "empty %: toxic",
                "empty %: normal",
                "ref. NLL (normal)",
                "",
            ],
            rows,
            "lrrrrrrrl",
        )
        + f"\n\nRule: {note}"
    )


def _cell_text(text: str, n: int = 160) -> str:
    t = " ".join(text.split()).replace("|", "\\|")
    return t if len(t) <= n else t[:n] + "…"


def examples_table(results: Mapping[str, Any]) -> str:
    """Like Table 12: answers of t1 and of the merge to held-out toxic and normal instructions."""
    k = results["recipe"]["options"].get("examples", 3)
    rows = []
    for c in results["cells"][:1]:
        for kind in ("toxic", "normal"):
            a1 = c["rows"]["t1"][f"answers_{kind}"][:k]
            merges = [(f"merge (l={c['lambda']:g}, rule)", c["rows"]["merge"])]
            merges += [
                (f"merge (l={key.split('@')[1]}, fixed)", m)
                for key, m in c["rows"].items()
                if key.startswith("merge@")
            ]
            for i, x in enumerate(a1):
                rows.append([f"{kind} instruction", _cell_text(x["instruction"], 100), "", ""])
                rows.append(["", "t1", _cell_text(x["answer"]), f"{x['toxicity']:.3f}"])
                for name, m in merges:
                    y = m[f"answers_{kind}"][i]
                    rows.append(["", name, _cell_text(y["answer"]), f"{y['toxicity']:.3f}"])
    return table(["", "", "text", "toxicity"], rows, "llll")


def timing_table(results: Mapping[str, Any]) -> str:
    rows = []
    for c in results["cells"]:
        evals = sum(m.get("seconds", 0) for m in c["rows"].values())
        rows.append(
            [
                c["seed"],
                *(
                    seconds(c["train_seconds"][n]) if c["train_seconds"].get(n) else "-"
                    for n in ("t1", "toxic")
                ),
                *(
                    seconds(c["train_cpu_seconds"][n]) if c["train_cpu_seconds"].get(n) else "-"
                    for n in ("t1", "toxic")
                ),
                seconds(c["sweep_seconds"]) if c.get("sweep_seconds") else "-",
                len(c["curve"]),
                seconds(evals),
            ]
        )
    return table(
        [
            "seed",
            "t1 training (wall)",
            "t_toxic (wall)",
            "t1 (CPU)",
            "t_toxic (CPU)",
            "sweep (wall)",
            "points",
            "test measurements (wall)",
        ],
        rows,
        "lrrrrrrr",
    )


def options_text(results: Mapping[str, Any]) -> str:
    o = results["recipe"]["options"]
    d = results["cells"][0]["data"] if results.get("cells") else {}
    return (
        f"- data: t1 trained on {d.get('benign_train', '?')} benign pairs, t_toxic on "
        f"{d.get('toxic_train', '?')} toxic pairs; held-out test: {d.get('test_toxic', '?')} "
        f"toxic and {d.get('test_normal', '?')} normal instructions (validation: "
        f"{d.get('validation_toxic', '?')} / {d.get('validation_normal', '?')}); greedy "
        f"answers of {o['max_new_tokens']} new tokens, toxic = score > {o['threshold']}; "
        f"lambda: largest with validation NLL within {o['nll_margin']} of t1's"
        + (
            f"; also measured on test at the fixed lambda "
            f"{', '.join(f'{v:g}' for v in o.get('fixed_lambdas', ()))} (the paper's value)"
            if o.get("fixed_lambdas")
            else ""
        )
    )


def sections(results: Mapping[str, Any]) -> dict[str, str]:
    if not results.get("cells"):
        return {"settings": settings_text(results), "table": "(no finished cells yet)"}
    return {
        "settings": settings_text(results) + "\n" + options_text(results),
        "table": main_table(results),
        "differences": paired_differences(results),
        "curve": curve_table(results),
        "examples": examples_table(results),
        "timing": timing_table(results),
    }


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Toxicity of the answers, the share of empty answers (an empty answer scores as harmless)
    and the reference NLL against lambda (validation)."""
    plt = pyplot()

    cells = results.get("cells", [])
    if not cells:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for c in cells:
        xs = [p["l"] for p in c["curve"]]
        axes[0].plot(
            xs,
            [p["toxicity_toxic"] for p in c["curve"]],
            marker="o",
            markersize=3,
            label=f"toxic instructions, seed {c['seed']}",
        )
        axes[0].plot(
            xs,
            [p["toxicity_normal"] for p in c["curve"]],
            marker="x",
            markersize=3,
            linestyle="--",
            label=f"normal instructions, seed {c['seed']}",
        )
        for kind, style in (("toxic", "-"), ("normal", "--")):
            if all(p.get(f"empty_{kind}") is not None for p in c["curve"]):
                axes[1].plot(
                    xs,
                    [100 * p[f"empty_{kind}"] for p in c["curve"]],
                    marker="o",
                    markersize=3,
                    linestyle=style,
                    label=f"{kind} instructions, seed {c['seed']}",
                )
        axes[2].plot(
            xs, [p["nll_normal"] for p in c["curve"]], marker="o", markersize=3, label=f"seed {c['seed']}"
        )
        axes[2].axvline(c["lambda"], color="gray", linestyle=":", linewidth=1, label="picked")
    axes[0].set_ylabel("mean toxicity of answers (validation)")
    axes[1].set_ylabel("empty answers, % (validation)")
    axes[2].set_ylabel("reference NLL, normal (validation)")
    for ax in axes:
        ax.set_xlabel("lambda in (1+l)*t1 - l*t_toxic")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = save_png(fig, out / "detox_instruct.png")
    return [path]
