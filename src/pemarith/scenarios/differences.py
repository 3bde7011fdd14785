"""Uncertainty of differences between models measured on sampled text (sections 4.4 and 4.6):
bootstrap 95% intervals (:func:`pemarith.hf.stats.bootstrap_difference`) from the scores stored
per generation or per answer, as 4.3 and 4.5 give McNemar tests for classifiers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .report import LABELS, table


def sampled_differences(results: Mapping[str, Any]) -> str:
    """Each model against the base on test, with bootstrap 95% intervals.

    Generations of two models are independent samples (each model samples its own), so each is
    resampled on its own (:func:`pemarith.hf.stats.bootstrap_difference`, unpaired): the mean
    toxicity's difference (from the per-sample scores) and the toxic share's, in points (the
    share is the mean of ``score > threshold``; its indicators follow from the stored share and
    sample count alone, so results measured before the scores were stored get it too).
    """
    from ..hf.stats import bootstrap_difference, format_difference

    threshold = results["recipe"].get("options", {}).get("threshold", 0.8)

    def indicators(m: Mapping[str, Any]) -> list[float] | None:
        if m.get("scores"):
            return [float(v > threshold) for v in m["scores"]]
        if m.get("samples") and m.get("toxic_share") is not None:
            n = int(m["samples"])
            k = round(m["toxic_share"] * n)
            return [1.0] * k + [0.0] * (n - k)
        return None

    rows, missing = [], False
    for c in results["cells"]:
        base = c["rows"]["base"]
        name = LABELS[c["method"]] + (" exact" if c["mode"] == "exact" else "")
        for key, m in c["rows"].items():
            if key == "base" or key.startswith("ablation@"):
                continue
            ours, ref = indicators(m), indicators(base)
            if ours is None or ref is None:
                continue
            mean = None
            if m.get("scores") and base.get("scores"):
                mean = bootstrap_difference(m["scores"], base["scores"], paired=False)
            else:
                missing = True
            share = bootstrap_difference(ours, ref, paired=False)
            rows.append(
                [
                    f"{key.split('@')[0]} {name} - base",
                    c["seed"],
                    f"{len(ours)} / {len(ref)}",
                    format_difference(mean),
                    format_difference(share, 100, 1),
                ]
            )
    if not rows:
        return "(no test measurements with sample counts in this results file)"
    note = (
        "\n\nThe mean toxicity's interval needs the per-sample scores, which this results file "
        "predates (`-`); the toxic share's follows from the stored share and sample count."
        if missing
        else ""
    )
    return (
        table(
            [
                "comparison (test)",
                "seed",
                "samples",
                "mean toxicity difference [95% CI]",
                "toxic % difference, points [95% CI]",
            ],
            rows,
            "lrrrr",
        )
        + note
    )


def paired_differences(results: Mapping[str, Any]) -> str:
    """The detoxified merge against ``t1`` and the base on the same test instructions, with
    paired bootstrap 95% intervals (the instructions resampled jointly,
    :func:`pemarith.hf.stats.bootstrap_difference`): mean toxicity and toxic share (points)."""
    from ..hf.stats import bootstrap_difference, format_difference

    threshold = results["recipe"].get("options", {}).get("threshold", 0.8)
    rows = []
    for c in results["cells"]:
        for ours, ref in (("merge", "t1"), ("merge", "base"), ("toxic", "t1")):
            if ours not in c["rows"] or ref not in c["rows"]:
                continue
            for kind in ("toxic", "normal"):
                a = [x["toxicity"] for x in c["rows"][ours].get(f"answers_{kind}", [])]
                b = [x["toxicity"] for x in c["rows"][ref].get(f"answers_{kind}", [])]
                if len(a) < 2 or len(a) != len(b):
                    continue
                mean = bootstrap_difference(a, b, paired=True)
                share = bootstrap_difference(
                    [float(v > threshold) for v in a], [float(v > threshold) for v in b], paired=True
                )
                rows.append(
                    [
                        f"{ours} - {ref}",
                        c["seed"],
                        kind,
                        len(a),
                        format_difference(mean),
                        format_difference(share, 100, 1),
                    ]
                )
    if not rows:
        return "(no per-answer toxicity in this results file)"
    return table(
        [
            "comparison (test)",
            "seed",
            "instructions",
            "n",
            "mean toxicity difference [95% CI]",
            "toxic % difference, points [95% CI]",
        ],
        rows,
        "lrlrrr",
    )
