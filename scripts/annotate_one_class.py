"""One-off (commit 3eb13bd): flag the one-class modules of committed 4.2 results, from their stored
test scores and the test halves' class shares (pemarith.scenarios.report.one_class), and re-render
the page. New runs flag them as they run; this is for results computed before that.

    PEMARITH_DATA_DIR=../shared/data python scripts/annotate_one_class.py distribution-generalisation
"""

import json
import sys
from pathlib import Path

from pemarith.hf.data import load_split
from pemarith.hf.tasks import get_task
from pemarith.scenarios.docs import publish_docs
from pemarith.scenarios.report import class_shares, one_class

for name in sys.argv[1:]:
    path = Path(f"docs/results/data/{name}.json")
    res = json.loads(path.read_text())
    limit = res["recipe"]["sweep"].get("limit")
    shares = {}
    changed = 0
    for c in res["cells"]:
        t = c["task"]
        if t not in shares:
            shares[t] = (
                class_shares([r["label"] for r in load_split(t, "test", seed=0)[:limit]])
                if get_task(t).kind == "classification"
                else []
            )
        # the stored test scores hold only the cell's metric: rebuild the mapping one_class reads
        test = c["scores"]["test"]
        flagged = [
            n
            for n in ("s0", "s1")
            if test.get(n) is not None
            and one_class({c["metric"]: test[n]}, shares[t] if c["metric"] == "accuracy" else ())
        ]
        old = c.get("one_class") or []
        new = sorted(set(old) | set(flagged))
        if new != old:
            changed += 1
        c["one_class"] = new
    print(name, "cells changed:", changed, {t: [round(s, 4) for s in v] for t, v in shares.items()})
    publish_docs(res, Path("docs/results"), name.removesuffix("-quick"))
