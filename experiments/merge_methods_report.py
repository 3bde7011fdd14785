"""``docs/results/merge-methods.md`` from ``docs/results/data/merge-methods-*.json``
(``python experiments/merge_methods.py --report``; nothing is rerun)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from pemarith.fs import write_file, write_with

LABELS = {
    "linear": "linear (the paper's)",
    "ties": "TIES, density 0.5",
    "dare_ties": "DARE-TIES, density 0.5",
}
ALPHA = 0.05


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return pct(xs[0])
    return f"{pct(statistics.mean(xs))} ± {pct(statistics.stdev(xs))}"


def test_of(p: dict[str, Any]) -> str:
    """``b/c, p`` of a McNemar test: b rows right only for linear, c only for the method."""
    star = " *" if p["p"] < ALPHA else ""
    return f"{p['b']}/{p['c']}, p={p['p']:.2f}{star}"


def section_42(doc: dict[str, Any]) -> list[str]:
    cells = doc["cells"]
    methods = doc["methods"]
    out = [
        "## 4.2: two modules of one task, trained on label-skewed subsets",
        "",
        "`l*s0 + (1-l)*s1`, MiniLM-L6, test accuracy (%) on the held-out half of the dev set, "
        "mean ± std over the seeds; lambda picked on the validation half for each method.",
        "",
        "| task | kind | seeds | s0 | s1 | " + " | ".join(LABELS[m] for m in methods) + " |",
        "|---|---|---|---|---|" + "---|" * len(methods),
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["task"], c["kind"]), []).append(c)
    for (task, kind), cs in groups.items():
        metric = cs[0]["methods"]["linear"]["metric"]
        row = [
            task,
            kind,
            ",".join(str(c["seed"]) for c in cs),
            mean_std([c["modules"]["s0"][metric] for c in cs]),
            mean_std([c["modules"]["s1"][metric] for c in cs]),
        ]
        row += [mean_std([c["methods"][m]["test"][metric] for c in cs if m in c["methods"]]) for m in methods]
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        "Per seed: the lambda each method picked, its test accuracy, and the exact McNemar "
        "test of its per-row test correctness against linear arithmetic's (b/c: rows only "
        f"linear / only the method gets right; * p < {ALPHA}).",
        "",
        "| task | kind | seed | "
        + " | ".join(methods)
        + " | "
        + " | ".join(f"{m} vs linear" for m in methods[1:])
        + " |",
        "|---|---|---|" + "---|" * (2 * len(methods) - 1),
    ]
    for c in cells:
        ms = c["methods"]
        metric = ms["linear"]["metric"]
        row = [c["task"], c["kind"], str(c["seed"])]
        row += [f"l={ms[m]['lambda']:g}: {pct(ms[m]['test'][metric])}" if m in ms else "-" for m in methods]
        row += [test_of(ms[m]["vs_linear"]["pooled"]) if m in ms else "-" for m in methods[1:]]
        out.append("| " + " | ".join(row) + " |")
    return out


def section_43(doc: dict[str, Any]) -> list[str]:
    methods = doc["methods"]
    out = [
        "## 4.3: an MNLI module and an RTE module of one causal LM",
        "",
        "`l*mnli + (1-l)*rte`, SmolLM2-135M-Instruct, lambda picked on the mean of the two "
        "tasks' validation accuracies; test accuracy (%) per task and their mean.",
        "",
        "| kind | seed | row | lambda | MNLI | RTE | mean | vs linear (pooled rows) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cells"]:
        for name, scores in c["modules"].items():
            mean = (scores["mnli.accuracy"] + scores["rte.accuracy"]) / 2
            out.append(
                f"| {c['kind']} | {c['seed']} | {name} module alone | - | "
                f"{pct(scores['mnli.accuracy'])} | {pct(scores['rte.accuracy'])} | {pct(mean)} | - |"
            )
        for m in [m for m in methods if m in c["methods"]]:
            r = c["methods"][m]
            t = r["test"]
            vs = test_of(r["vs_linear"]["pooled"]) if "vs_linear" in r else "-"
            out.append(
                f"| {c['kind']} | {c['seed']} | {LABELS[m]} | {r['lambda']:g} | "
                f"{pct(t['mnli.accuracy'])} | {pct(t['rte.accuracy'])} | {pct(t['mean'])} | {vs} |"
            )
    return out


def findings(docs: dict[str, dict[str, Any]]) -> list[str]:
    """Counted from the data: in how many cells a method is above/below linear, how often
    significantly."""
    out = []
    for m in ("ties", "dare_ties"):
        up = down = sig_up = sig_down = n = 0
        for doc in docs.values():
            for c in [c for c in doc["cells"] if m in c["methods"]]:
                r, lin = c["methods"][m], c["methods"]["linear"]
                key = "mean" if "mean" in r["test"] else r["metric"]
                d = r["test"][key] - lin["test"][key]
                p = r["vs_linear"]["pooled"]
                n += 1
                up += d > 0
                down += d < 0
                sig_up += d > 0 and p["p"] < ALPHA
                sig_down += d < 0 and p["p"] < ALPHA
        out.append(
            f"- {LABELS[m]}: above linear arithmetic in {up} of {n} module sets, below in "
            f"{down}; significantly (McNemar p < {ALPHA}, uncorrected) above in {sig_up}, "
            f"below in {sig_down}."
        )
    return out


def plot(docs: dict[str, dict[str, Any]], path: Path) -> bool:
    """Validation curves of every method, one panel per module set of seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(part, c) for part, d in sorted(docs.items()) for c in d["cells"] if c["seed"] == 0]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (part, c) in zip(axes[0], panels):
        for m, r in c["methods"].items():
            pts = sorted((x, y) for x, y in r["curve"] if y is not None)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=m)
        metric = "mean accuracy" if part == "4.3" else c["methods"]["linear"]["metric"]
        ax.set_title(f"{part} {c['task']} {c['kind']} seed {c['seed']}", fontsize=9)
        ax.set_xlabel("lambda")
        ax.set_ylabel(f"validation {metric}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return True


def write_report(data: Path, page: Path) -> None:
    docs = {}
    for part in ("4.2", "4.3"):
        f = data / f"merge-methods-{part}.json"
        if f.is_file():
            docs[part] = json.loads(f.read_text())
    if not docs:
        raise SystemExit(f"error: no {data}/merge-methods-4.2.json or -4.3.json: run the experiment first")
    img = page.parent / "img" / "merge-methods" / "curves.png"
    lines = [
        "# Merge methods beyond linear arithmetic: TIES and DARE on two of the paper's settings",
        "",
        "<!-- generated by `python experiments/merge_methods.py --report`; edit "
        "experiments/merge_methods_report.py, not this file -->",
        "",
        "Not in the paper. The question: on the paper's own module sets, does replacing its "
        "linear arithmetic by TIES (Yadav et al., 2023: trim each task vector to its largest "
        "`density` share, elect a sign per entry, average the agreeing entries) or DARE-TIES "
        "(Yu et al., 2023: drop entries at random with probability `1 - density`, rescale the "
        "rest by `1 / density`, then TIES's sign election) change what the merge can do? "
        "Each method gets its own lambda sweep (same grid, same validation rows, lambda picked "
        "by the same rule), so none is handicapped by the other's lambda.",
        "",
        "How: `pemarith sweep --method ties --density 0.5 --mode exact --rank R` does each "
        "sweep (here driven by `experiments/merge_methods.py`, through the reproductions' "
        "store). LoRA merges run in exact mode, the methods acting on each layer's dense "
        "update `B A`, re-factored at R = min(d_out, d_in) of the smallest adapted layer "
        "(MiniLM 384, SmolLM2 192), which truncates nothing; linear is the exact-mode merge. "
        "The task vectors are signed by the expression's coefficients (SPEC.md): "
        "`c_i s_i B_i A_i` for LoRA, `c_i (l_i - 1)` for (IA)3.",
        "",
        "What it shows, counted from the tables below:",
        "",
        *findings(docs),
        "",
        "Neither method improves on the paper's linear arithmetic on these module sets: "
        "given its own lambda, each is at most about as good as linear and mostly a little "
        "worse; few differences are significant, and those tests are uncorrected for their "
        "number. TIES and DARE were designed against interference between many task vectors "
        "of different tasks; two modules trained from one initialisation (4.2), or a strong "
        "and a weak one (4.3), give them little to resolve. This is no evidence about "
        "merging many modules.",
        "",
    ]
    if plot(docs, img):
        lines += [
            f"![validation curves per method]({img.relative_to(page.parent).as_posix()})",
            "",
            "Validation curves, seed 0. The methods peak at about the same lambda, but TIES "
            "and DARE-TIES lie below linear arithmetic over most of the range, and their "
            "ends differ from it too: at lambda 0 or 1 the merge is one pruned task vector, "
            "not the module. The dip near lambda 0.1 is TIES's disjoint mean: where the "
            "signs agree it takes the mean `(0.1 tau_s0 + 0.9 tau_s1) / 2` where linear "
            "arithmetic takes the sum, so a small coefficient on one module halves the "
            "other's update.",
            "",
        ]
    if "4.2" in docs:
        lines += [*section_42(docs["4.2"]), ""]
    if "4.3" in docs:
        lines += [*section_43(docs["4.3"]), ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        "python experiments/merge_methods.py --part 4.2 --tasks sst2 --seeds 0 1 2",
        "python experiments/merge_methods.py --part 4.3 --limit 100 --seeds 0 --kinds lora",
        "python experiments/merge_methods.py --report",
        "```",
        "",
        "The modules are the 4.2 and 4.3 recipes' own (`experiments/*.toml`; trained if "
        "the store lacks them). 4.3 evaluates 100 rows per split and task (the recipe: "
        "200) to fit three sweeps in a session. Sweep times on this project's 2-core CPU, one "
        "thread per run, with other runs and tests beside it (not a benchmark): " + runtime(docs) + ".",
        "",
    ]
    write_file(page, "\n".join(lines))
    print(f"wrote {page}")


def runtime(docs: dict[str, dict[str, Any]]) -> str:
    parts = []
    for part, d in sorted(docs.items()):
        for c in d["cells"]:
            secs = [r.get("sweep_seconds") or 0 for r in c["methods"].values()]
            parts.append(
                f"{part} {c['task']} {c['kind']} seed {c['seed']}: sweeps "
                + "/".join(f"{s:.0f}" for s in secs)
                + " s"
            )
    return "; ".join(parts)
