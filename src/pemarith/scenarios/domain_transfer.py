"""Section 4.5: composition for domain transfer (Table 5, Figure 7).

Sentiment classification on a target domain without target labels, by analogy: a classifier
trained on the labelled *source* reviews, plus the difference of two language-model modules
trained on the unlabelled texts of the target and of the source,

    cls_target ~ l*cls_source + (1-l)*(lm_target - lm_source)        (``EXPR``)

The classifier is a causal LM answering the task's prompt with "positive" or "negative"
(constrained to those two words, as the paper's constrained decoding; the task records' prompt
and label words), so classifier and LM modules share every trainable weight. The LM modules are
trained on the train split's review sentences joined and cut into 128-token fragments
(Appendix B; the trainer's ``lm`` objective does exactly that with ``max_length = 128``).

Lambda is chosen **without target labels**: on the *source* validation split (accuracy of the
merge on source reviews). Beside it, marked as such, the lambda a small *labelled target
validation* set would choose (``target_val_limit`` rows of the target's validation split).
Rows on the target's test set: source (the source classifier alone), merge (both lambdas) and
target (a classifier trained on the target's labels: a reference only). A ``*`` marks a merge
whose per-row correctness differs significantly from the source classifier's (exact McNemar
test, p < 0.05; :mod:`pemarith.hf.stats`). Both directions (Amazon -> Yelp, Yelp -> Amazon),
LoRA and (IA)3, and beyond the paper LoRA in ``exact`` mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .domain_transfer_report import paper_table, plot, sections
from .lm_common import LiveLM, chunk_ids, eval_key, record, rows_module
from .recipe import RecipeError
from .runner import Context, ModuleSpec
from .scenario import Scenario
from .store import read_json

EXPR = "l*cls + (1-l)*(lmt - lms)"
DOMAINS = ("amazon", "yelp")


@dataclass(frozen=True)
class TransferOptions:
    """``[options]`` of 4.5 (see the module docstring).

    ``directions``: ``"source->target"`` pairs. ``chunk_tokens``: LM fragment length.
    ``lm_rows``: review sentences per domain for the LM modules (None: the whole train split).
    ``val_limit``: source validation rows for choosing lambda; ``target_val_limit``: labelled
    target validation rows for the second (reference) choice, 0 for none; ``test_limit``: target
    test rows (None: all 1000). ``exact``: LoRA also in exact mode. ``alpha``: the test's level.
    """

    directions: tuple[str, ...] = ("amazon->yelp", "yelp->amazon")
    chunk_tokens: int = 128
    lm_rows: int | None = None
    val_limit: int = 200
    target_val_limit: int = 200
    test_limit: int | None = None
    exact: bool = True
    alpha: float = 0.05
    batch_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", tuple(self.directions))
        for d in self.directions:
            parts = d.split("->")
            if len(parts) != 2 or parts[0] == parts[1] or not set(parts) <= set(DOMAINS):
                raise RecipeError(
                    f"[options] directions: {d!r} is not SOURCE->TARGET with "
                    f"SOURCE, TARGET in {', '.join(DOMAINS)}"
                )
        if self.chunk_tokens < 4 or self.val_limit < 1 or self.target_val_limit < 0:
            raise RecipeError("[options] chunk_tokens >= 4, val_limit >= 1, target_val_limit >= 0")
        if not 0 < self.alpha < 1:
            raise RecipeError(f"[options] alpha must be in (0, 1), not {self.alpha}")


def split_direction(d: str) -> tuple[str, str]:
    src, tgt = d.split("->")
    return src, tgt


class ClsSession(LiveLM):
    """A sweep session scoring the live model's label-word accuracy on several tasks.

    ``evaluate(split)`` gives ``{"TASK.accuracy": ...}`` on the first ``limits[task]`` rows of
    ``split``; :meth:`predict` gives per-row predictions (for the paired test).
    """

    text_only = False

    def __init__(self, ctx: Context, probe_config: dict[str, Any], limits: Mapping[str, int | None]):
        super().__init__(ctx, probe_config)
        self.limits = dict(limits)
        self._rows: dict[tuple[str, str, int | None], list[dict[str, Any]]] = {}

    def rows(self, task: str, split: str, limit: int | None) -> list[dict[str, Any]]:
        key = (task, split, limit)
        if key not in self._rows:
            from ..hf.data import load_split

            rows = load_split(task, split, data_dir=self.ctx.data_dir)
            self._rows[key] = rows[:limit] if limit is not None else rows
        return self._rows[key]

    def predict(self, task: str, split: str, limit: int | None) -> tuple[list[int], list[int]]:
        """(predictions, labels) of the live model on ``split`` of ``task``."""
        from ..hf.evaluate import score_choices
        from ..hf.tasks import get_task

        live = self.live
        rows = self.rows(task, split, limit)
        scores = score_choices(
            live.model, self._tok, get_task(task), rows, batch_size=self.ctx.recipe.options.batch_size
        )
        return [int(x) for x in scores.argmax(-1)], [int(r["label"]) for r in rows]

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        if base:
            raise RecipeError("domain transfer: the base model is not evaluated")
        out = {}
        for task, limit in self.limits.items():
            preds, labels = self.predict(task, split, limit)
            out[f"{task}.accuracy"] = sum(p == y for p, y in zip(preds, labels)) / len(labels)
        return out

    def primary_metrics(self, keys: Any) -> list[str]:
        return [f"{t}.accuracy" for t in self.limits if f"{t}.accuracy" in keys]


def _lm_rows(ctx: Context, domain: str) -> list[dict[str, Any]]:
    from ..hf.data import load_split

    rows = load_split(domain, "train", data_dir=ctx.data_dir)
    n = ctx.recipe.options.lm_rows
    return [{"text_a": r["text_a"], "text_b": None, "label": None} for r in rows[:n]]


def fragments(ctx: Context, rows: list[dict[str, Any]]) -> int:
    """How many ``chunk_tokens`` fragments the LM rows make (texts joined by EOS)."""
    from ..hf.models import load_tokenizer

    tok = load_tokenizer(ctx.recipe.model)
    ids: list[int] = []
    for r in rows:
        ids += tok(r["text_a"], add_special_tokens=False).input_ids + [tok.eos_token_id]
    return len(chunk_ids(ids, ctx.recipe.options.chunk_tokens))


def modules(ctx: Context, method: str, seed: int) -> dict[str, Path]:
    """cls_<domain> (labelled train split) and lm_<domain> (its texts) for every domain."""
    r, o = ctx.recipe, ctx.recipe.options
    out = {}
    for d in DOMAINS:
        out[f"cls_{d}"] = ctx.module(
            ModuleSpec(
                model=r.model,
                task=d,
                method=method,
                data="train",
                train=r.train[method].for_task(d),
                init_seed=seed,
                seed=seed,
            )
        )
        spec = dataclasses.replace(r.train[method].for_task("lm"), max_length=o.chunk_tokens, per_task={})
        out[f"lm_{d}"] = rows_module(
            ctx, task=d, name="lm", method=method, spec=spec, rows=_lm_rows(ctx, d), seed=seed, objective="lm"
        )
    for p in out.values():
        record(ctx, p)
    return out


def transfer_cell(
    ctx: Context, direction: str, method: str, seed: int, mods: Mapping[str, Path], mode: str = "factorwise"
) -> dict[str, Any]:
    """Sweep the analogy on validation, pick lambda (source; target), score target test rows."""
    import pemarith

    from ..hf.select import parse_rule
    from ..hf.stats import mcnemar_exact
    from ..hf.sweep import SweepConfig, run_sweep

    r, o, s = ctx.recipe, ctx.recipe.options, ctx.recipe.sweep
    src, tgt = split_direction(direction)
    paths = {"cls": mods[f"cls_{src}"], "lmt": mods[f"lm_{tgt}"], "lms": mods[f"lm_{src}"]}
    pems = {n: pemarith.load(p, n) for n, p in paths.items()}
    limits = {src: o.val_limit, **({tgt: o.target_val_limit} if o.target_val_limit else {})}
    probe = pemarith.compose(EXPR, pems, mode=mode, l=0.5).output_config(mode, None)
    session = ClsSession(ctx, probe, limits)
    label = f"{src}-to-{tgt}-{method}-{mode}-seed{seed}"
    key = eval_key(ctx, "sweep", paths, expr=EXPR, mode=mode, grid=s.grid, limits=limits)
    out = ctx.store.sweep_dir(r.model, f"{src}-to-{tgt}", label, key)
    if (out / "results.json").is_file():
        ctx.store.hits += 1
        ctx.log(f"skip  sweep {label} (done: {out})")
    else:
        ctx.log(f"sweep {label} {EXPR!r} ({mode}) -> {out}")
        cfg = SweepConfig(
            expr=EXPR,
            modules={n: str(p) for n, p in paths.items()},
            model=r.model,
            tasks=tuple(limits),
            out=str(out),
            var=s.var,
            grid=s.grid,
            search="grid",
            select=f"max {src}.accuracy",
            mode=mode,
            test_split=None,
            refs=False,
            base=False,
            limit=o.val_limit,
            data_dir=ctx.data_dir,
            plot=ctx.plots,
            batch_size=o.batch_size,
        )
        run_sweep(cfg, session=session, log=ctx.log)
        ctx.store.computed += 1
    sweep = read_json(out / "results.json")
    var = s.var
    records = [(p[var], p) for p in sweep["validation"]]
    columns = list(sweep["metrics"])
    lams = {"merge": parse_rule(f"max {src}.accuracy").pick(records, var, columns)}
    if o.target_val_limit:
        lams["merge_targetval"] = parse_rule(f"max {tgt}.accuracy").pick(records, var, columns)

    def test_preds(what: str, expr: str, names: list[str], lam: float | None) -> dict[str, Any]:
        used = {n: paths.get(n) or mods[n] for n in names}
        file = ctx.store.eval_file(
            r.model,
            f"{src}-to-{tgt}",
            f"{label}-{what}-test",
            eval_key(ctx, what, used, expr=expr, mode=mode, lam=lam, task=tgt, limit=o.test_limit),
        )

        def compute() -> dict[str, Any]:
            ctx.log(f"eval  {label} {what} on {tgt} test")
            terms = {n: pemarith.load(p, n) for n, p in used.items()}
            pem = pemarith.compose(expr, terms, mode=mode, variables={var: lam} if lam is not None else None)
            session.load(pem, mode, None, None)
            preds, labels = session.predict(tgt, "test", o.test_limit)
            return {
                "preds": preds,
                "labels": labels,
                "accuracy": sum(p == y for p, y in zip(preds, labels)) / len(labels),
            }

        return ctx.store.cached_json(file, compute)

    rows = {"source": test_preds("source", "cls", ["cls"], None)}
    for what, lam in lams.items():  # one cached evaluation when both choices agree
        rows[what] = test_preds(f"merge@{lam:g}", EXPR, ["cls", "lmt", "lms"], lam)
    rows["target"] = test_preds("target", f"cls_{tgt}", [f"cls_{tgt}"], None)
    correct = {k: [p == y for p, y in zip(v["preds"], v["labels"])] for k, v in rows.items()}
    tests = {k: mcnemar_exact(correct["source"], correct[k]) for k in lams}
    return {
        "task": tgt,
        "direction": direction,
        "source": src,
        "target": tgt,
        "method": method,
        "mode": mode,
        "seed": seed,
        "lambda": lams["merge"],
        "lambda_targetval": lams.get("merge_targetval"),
        "test": {k: v["accuracy"] for k, v in rows.items()},
        "n_test": len(rows["source"]["labels"]),
        "mcnemar": tests,
        "curve": [[p[var], p.get(f"{src}.accuracy"), p.get(f"{tgt}.accuracy")] for p in sweep["validation"]],
        "train_seconds": {n: ctx.seconds.get(str(p)) for n, p in mods.items()},
        "train_cpu_seconds": {n: ctx.cpu_seconds.get(str(p)) for n, p in mods.items()},
        "sweep_seconds": sweep.get("seconds"),
        "sweep_dir": str(out),
        "modules": {n: str(p) for n, p in mods.items()},
    }


def run(ctx: Context) -> dict[str, Any]:
    r, o = ctx.recipe, ctx.recipe.options
    if "full" in r.methods:
        raise RecipeError(
            "domain transfer: full fine-tuning of the causal LM is not part of this "
            "reproduction (too slow on CPU); use lora and ia3"
        )
    kept = {(c["direction"], c["method"], c["mode"], c["seed"]): c for c in ctx.previous_cells()}
    order = {"lora": 0, "ia3": 1}

    def save() -> dict[str, Any]:
        cells = sorted(
            kept.values(),
            key=lambda c: (
                c["seed"],
                o.directions.index(c["direction"]) if c["direction"] in o.directions else 9,
                order.get(c["method"], 9),
                c["mode"] != "factorwise",
            ),
        )
        return ctx.save({"cells": cells, "fragments": fragment_counts})

    fragment_counts = {d: fragments(ctx, _lm_rows(ctx, d)) for d in DOMAINS}
    for seed in r.seeds:
        for method in r.methods:
            mods = modules(ctx, method, seed)
            for direction in o.directions:
                modes = ["factorwise"] + (["exact"] if method == "lora" and o.exact else [])
                for mode in modes:
                    kept[(direction, method, mode, seed)] = transfer_cell(
                        ctx, direction, method, seed, mods, mode
                    )
                    save()
    return save()


SCENARIO = Scenario(
    name="domain-transfer",
    section="4.5",
    options=TransferOptions,
    run=run,
    sections=sections,
    plot=plot,
    static=lambda: {"paper": paper_table()},
    title="Domain transfer by analogy (section 4.5, Table 5)",
)
