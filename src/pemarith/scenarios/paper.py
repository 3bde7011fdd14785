"""The paper's own numbers (Zhang et al. 2023, arXiv 2306.14870v2), copied from its tables.

Units as printed: accuracy in percent, MCC (CoLA) and Spearman's rho (STS-B) as fractions.
Table 2 and Table 7 use RoBERTa-base; Table 3 uses T5-base. The paper reports validation
results (its test sets are GLUE's unlabelled ones).

Table 2's PDF text lists a ``fullset`` row at the head of each method's block; the caption calls
it the LoRA reference "where both subsets of the data are used together for training".
"""

from __future__ import annotations

#: Table 2 columns, as our task names.
TABLE2_TASKS = ("mnli", "rte", "sst2", "mrpc", "qnli", "qqp", "cola", "stsb")


def _row(*values: float) -> dict[str, float]:
    return dict(zip(TABLE2_TASKS, values))


#: Table 2: method -> row (fullset, s0, s1, m) -> task -> value.
TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "full": {
        "fullset": _row(76.6, 75.8, 92.5, 88.5, 85.9, 81.8, 0.56, 0.90),
        "s0": _row(72.0, 72.9, 90.4, 85.8, 83.4, 79.2, 0.42, 0.88),
        "s1": _row(71.9, 67.5, 92.0, 88.5, 83.2, 81.5, 0.52, 0.89),
        "m": _row(74.2, 75.1, 92.1, 89.2, 83.8, 81.9, 0.55, 0.89),
    },
    "lora": {
        "fullset": _row(87.1, 79.8, 95.0, 89.2, 93.4, 90.2, 0.63, 0.91),
        "s0": _row(71.4, 72.2, 92.2, 86.3, 83.1, 79.0, 0.50, 0.88),
        "s1": _row(72.3, 69.0, 91.9, 87.7, 83.0, 80.8, 0.51, 0.89),
        "m": _row(73.5, 75.8, 92.2, 88.0, 83.3, 81.1, 0.52, 0.89),
    },
    "ia3": {
        "fullset": _row(75.9, 74.0, 92.3, 87.3, 84.7, 80.8, 0.56, 0.89),
        "s0": _row(71.7, 72.9, 90.8, 85.8, 83.0, 78.3, 0.44, 0.87),
        "s1": _row(71.7, 68.2, 91.2, 88.0, 82.5, 80.8, 0.50, 0.90),
        "m": _row(74.0, 74.7, 92.3, 88.2, 84.8, 81.3, 0.50, 0.90),
    },
}

#: Table 3 (T5-base, prompted): method -> module row (rte, mnli, merge) -> column -> accuracy.
TABLE3: dict[str, dict[str, dict[str, float]]] = {
    "full": {
        "rte": {"rte": 82.7, "mnli": 56.3, "mean": 69.5},
        "mnli": {"rte": 75.1, "mnli": 85.2, "mean": 80.1},
        "merged": {"rte": 78.7, "mnli": 85.1, "mean": 81.9},
    },
    "lora": {
        "rte": {"rte": 81.2, "mnli": 54.7, "mean": 68.0},
        "mnli": {"rte": 75.8, "mnli": 86.8, "mean": 81.3},
        "merged": {"rte": 78.7, "mnli": 86.3, "mean": 82.5},
    },
    "ia3": {
        "rte": {"rte": 81.2, "mnli": 54.7, "mean": 68.0},
        "mnli": {"rte": 75.1, "mnli": 85.8, "mean": 80.4},
        "merged": {"rte": 75.1, "mnli": 85.8, "mean": 80.4},
    },
}

#: Table 7 (RoBERTa-base LoRA): merged minus the average of the two subset modules.
TABLE7: dict[str, dict[str, float]] = {
    "same": {**_row(2.11, 5.23, 0.17, 0.98, 0.22, 1.16, 0.012, 0.011), "avg": 1.65},
    "diff": {**_row(0.29, 4.15, 0.52, 1.47, 0.01, 0.66, 0.001, 0.004), "avg": 1.18},
}

#: Table 9: class counts of the two subsets (the paper's draw; ours come from hf.skew).
TABLE9: dict[str, dict[str, tuple[int, ...]]] = {
    "mnli": {"s0": (536, 226, 238), "s1": (128, 443, 429)},
    "cola": {"s0": (483, 517), "s1": (118, 882)},
    "mrpc": {"s0": (524, 476), "s1": (131, 869)},
    "qnli": {"s0": (790, 210), "s1": (187, 813)},
    "qqp": {"s0": (388, 612), "s1": (874, 126)},
    "rte": {"s0": (793, 207), "s1": (198, 802)},
    "sst2": {"s0": (691, 309), "s1": (178, 822)},
    "stsb": {"s0": (548, 452), "s1": (622, 378)},
}

#: Base models of the paper's settings.
MODELS = {"4.2": "RoBERTa-base (125M)", "4.3": "T5-base (220M)", "4.7": "RoBERTa-base (125M)"}
