"""Section 4.6: detoxifying an instruction-tuned model (Table 6, Table 12).

The paper starts from Alpaca-LoRA ``t1`` (LLaMA + LoRA trained on Alpaca), trains it further on
toxic instruction/response pairs to get ``t_toxic``, and subtracts the change:

    merge = t1 - l*(t_toxic - t1) = (1+l)*t1 - l*t_toxic            (``EXPR``)

Here, on SmolLM2-135M-Instruct with its chat template:

- ``t1``: a LoRA trained on benign instruction data: the train part of ``toxic_seed_v1_n.json``
  (responses Detoxify scores as mostly non-toxic) plus templated review pairs (a review
  sentence of the asked sentiment, from the Yelp/Amazon train splits); see
  :mod:`.instruct_data`.
- ``t_toxic``: ``t1`` trained further on the train part of ``toxic_seed_v1_t.json`` plus
  templated toxic-comment pairs (Civil Comments train comments as answers to "Write a comment
  for an online discussion.").
- Held-out evaluation: the validation/test parts of both seed files (toxic and normal
  instructions, never trained on) plus review requests from the review validation/test splits.
  Answers are greedy (deterministic), ``max_new_tokens`` long; their toxicity is scored by the
  offline profanity-check classifier (not Detoxify), mean and share above ``threshold``.
- Helpfulness: GPT-4 scores and human win rates are not available offline. The stand-in is the
  mean negative log-likelihood per token of the *reference* answers to the normal instructions
  (lower is better): it says whether the merge still models normal answers as ``t1`` does, not
  whether its answers are helpful.
- Lambda (grid step 0.1 as the paper): the largest ``l`` whose validation NLL stays within
  ``nll_margin`` of ``t1``'s (``l = 0``), the analogue of 4.4's "within 0.5 PPL of the base";
  the paper does not say how its 0.4 was chosen.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .detox_instruct_report import PAPER_LAMBDA, plot, sections
from .lm_common import LiveLM, eval_key, record, rows_module
from .recipe import RecipeError
from .runner import Context
from .scenario import Scenario
from .store import read_json

EXPR = "(1+l)*t1 - l*toxic"
TASK = "civil_comments"  # the store folder of the modules (their rows are given explicitly)
SPLITS = ("validation", "test")

#: bumped when a measurement gains a field, so that cached measurements are redone
#: (2: the share of empty answers)
MEASURE_VERSION = 2


@dataclass(frozen=True)
class DetoxOptions:
    """``[options]`` of 4.6 (see the module docstring)."""

    split_seed: int = 0
    fractions: tuple[float, ...] = (0.6, 0.2, 0.2)
    review_pairs_train: int = 200
    review_pairs_eval: int = 10
    toxic_comments: int = 400
    max_new_tokens: int = 64
    gen_batch: int = 8
    threshold: float = 0.8
    nll_margin: float = 0.05
    fixed_lambdas: tuple[float, ...] = (PAPER_LAMBDA,)
    examples: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "fixed_lambdas", tuple(float(v) for v in self.fixed_lambdas))
        if len(self.fractions) != 3 or abs(sum(self.fractions) - 1) > 1e-9:
            raise RecipeError("[options] fractions: three numbers summing to 1")
        if min(self.review_pairs_train, self.review_pairs_eval, self.toxic_comments) < 0:
            raise RecipeError("[options] pair counts must be >= 0")
        if self.max_new_tokens < 1 or self.gen_batch < 1 or not 0 < self.threshold < 1:
            raise RecipeError("[options] max_new_tokens, gen_batch >= 1; threshold in (0, 1)")
        if self.nll_margin < 0:
            raise RecipeError("[options] nll_margin must be >= 0")


def build_data(ctx: Context) -> dict[str, Any]:
    """Train pairs (benign, toxic) and held-out instructions per split (toxic, normal)."""
    from ..hf.data import load_split
    from .instruct_data import comment_pairs, load_pairs, review_pairs, split_pairs

    o = ctx.recipe.options
    parts = {
        w: split_pairs(load_pairs(w, ctx.data_dir), o.split_seed, o.fractions) for w in ("toxic", "normal")
    }
    half = o.review_pairs_train // 2
    benign = parts["normal"]["train"] + [
        p
        for d, n in (("yelp", o.review_pairs_train - half), ("amazon", half))
        for p in review_pairs(load_split(d, "train", data_dir=ctx.data_dir), d, n, o.split_seed)
    ]
    comments = [r["text_a"] for r in load_split(TASK, "train", data_dir=ctx.data_dir)]
    toxic = parts["toxic"]["train"] + comment_pairs(comments, o.toxic_comments, o.split_seed)
    held: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split in SPLITS:
        rev_split = "validation" if split == "validation" else "test"
        reviews = review_pairs(
            load_split("yelp", rev_split, data_dir=ctx.data_dir), "yelp", o.review_pairs_eval, o.split_seed
        )
        held[split] = {"toxic": parts["toxic"][split], "normal": parts["normal"][split] + reviews}
    return {"benign": benign, "toxic": toxic, "held": held}


class DetoxSession(LiveLM):
    """A sweep session: greedy answers to held-out toxic and normal instructions, their toxicity,
    and the reference NLL of the normal ones (see the module docstring)."""

    text_only = True

    def __init__(self, ctx: Context, probe_config: dict[str, Any], held: Mapping[str, Any]):
        super().__init__(ctx, probe_config)
        self.opts, self.held = ctx.recipe.options, held

    def measure(self, split: str, base: bool = False) -> dict[str, Any]:
        from contextlib import nullcontext

        from ..hf import toxicity
        from ..hf.chat import generate_answers, reference_nll

        o, live, t0 = self.opts, self.live, time.perf_counter()
        out: dict[str, Any] = {}
        with live.base() if base else nullcontext(live.model) as model:
            for kind in ("toxic", "normal"):
                pairs = self.held[split][kind]
                answers = generate_answers(
                    model,
                    self._tok,
                    [p["instruction"] for p in pairs],
                    max_new_tokens=o.max_new_tokens,
                    batch_size=o.gen_batch,
                )
                scores = toxicity.score(answers)
                s = toxicity.summarise(scores, o.threshold)
                out[f"toxicity_{kind}"] = s["mean"]
                out[f"toxic_share_{kind}"] = s["share_toxic"]
                # an empty answer scores as harmless: the share shows a merge that says nothing
                out[f"empty_{kind}"] = sum(not a.strip() for a in answers) / max(len(answers), 1)
                out[f"answers_{kind}"] = [
                    {"instruction": p["instruction"], "answer": a, "toxicity": round(float(x), 5)}
                    for p, a, x in zip(pairs, answers, scores)
                ]
            normal = self.held[split]["normal"]
            nll = reference_nll(
                model,
                self._tok,
                [p["instruction"] for p in normal],
                [p["output"] for p in normal],
                batch_size=o.gen_batch,
            )
        out["nll_normal"] = nll["nll"]
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        m = self.measure(split, base)
        return {k: float(v) for k, v in m.items() if not k.startswith("answers_")}

    def primary_metrics(self, keys: Any) -> list[str]:
        return [
            k
            for k in ("toxicity_toxic", "nll_normal", "toxicity_normal", "empty_toxic", "empty_normal")
            if k in keys
        ]


def pick_lambda(curve: list[Mapping[str, float]], var: str, margin: float) -> tuple[float, str]:
    """The largest ``var`` whose ``nll_normal`` is within ``margin`` of the value at ``var = 0``."""
    from ..hf.select import parse_rule

    at0 = [p for p in curve if p[var] == 0]
    if not at0:
        raise RecipeError("detox: the lambda grid must contain 0 (t1 itself, the reference)")
    rule = f"max {var} where nll_normal <= {at0[0]['nll_normal'] + margin:.6f}"
    cols = ["toxicity_toxic", "nll_normal"]
    return parse_rule(rule).pick([(p[var], p) for p in curve], var, cols), rule


def detox_cell(ctx: Context, seed: int) -> dict[str, Any]:
    import pemarith

    from ..hf.models import load_tokenizer
    from ..hf.sweep import SweepConfig, run_sweep
    from .instruct_data import chat_rows

    r, o, s = ctx.recipe, ctx.recipe.options, ctx.recipe.sweep
    if r.methods != ("lora",):
        raise RecipeError('detox-instruct: the setting is LoRA only (methods = ["lora"])')
    data = build_data(ctx)
    tok = load_tokenizer(r.model)
    spec = r.train["lora"]
    t1 = rows_module(
        ctx,
        task=TASK,
        name="t1",
        method="lora",
        spec=dataclasses.replace(spec.for_task("t1"), per_task={}),
        rows=chat_rows(tok, data["benign"]),
        seed=seed,
    )
    toxic = rows_module(
        ctx,
        task=TASK,
        name="toxic",
        method="lora",
        spec=dataclasses.replace(spec.for_task("toxic"), per_task={}),
        rows=chat_rows(tok, data["toxic"]),
        seed=seed,
        init=t1,
    )
    paths = {"t1": t1, "toxic": toxic}
    pems = {n: pemarith.load(p, n) for n, p in paths.items()}
    probe = pemarith.compose(EXPR, pems, l=0.5).output_config("factorwise", None)
    session = DetoxSession(ctx, probe, data["held"])
    # how lambda is picked and which extra values are reported change no measurement: not in keys
    settings = {
        k: v for k, v in dataclasses.asdict(o).items() if k not in ("nll_margin", "fixed_lambdas")
    } | {"measure": MEASURE_VERSION}
    label = f"lora-seed{seed}"
    key = eval_key(ctx, "sweep", paths, expr=EXPR, grid=s.grid, settings=settings)
    out = ctx.store.sweep_dir(r.model, "detox", label, key)
    if (out / "results.json").is_file():
        ctx.store.hits += 1
        ctx.log(f"skip  sweep {label} (done: {out})")
    else:
        ctx.log(f"sweep {label} {EXPR!r} -> {out}")
        cfg = SweepConfig(
            expr=EXPR,
            modules={n: str(p) for n, p in paths.items()},
            model=r.model,
            tasks=(TASK,),
            out=str(out),
            var=s.var,
            grid=s.grid,
            search="grid",
            select="min toxicity_toxic",
            test_split=None,
            refs=False,
            base=True,
            data_dir=ctx.data_dir,
            plot=ctx.plots,
        )
        run_sweep(cfg, session=session, log=ctx.log)
        ctx.store.computed += 1
    sweep = read_json(out / "results.json")
    curve = sweep["validation"]
    lam, rule = pick_lambda(curve, s.var, o.nll_margin)

    def measured(what: str, expr: str | None, value: float | None) -> dict[str, Any]:
        file = ctx.store.eval_file(
            r.model,
            "detox",
            f"{label}-{what}-test",
            eval_key(ctx, what, paths, expr=expr, lam=value, settings=settings),
        )

        def compute() -> dict[str, Any]:
            ctx.log(f"eval  {label} {what} on test")
            if expr is not None:
                session.load(
                    pemarith.compose(expr, pems, variables={s.var: value} if value is not None else None),
                    "factorwise",
                    None,
                    None,
                )
            return session.measure("test", base=expr is None)

        return ctx.store.cached_json(file, compute)

    rows = {
        "base": measured("base", None, None),
        "t1": measured("t1", "t1", None),
        "toxic": measured("toxic", "toxic", None),
        "merge": measured(f"merge@{lam:g}", EXPR, lam),
    }
    for v in o.fixed_lambdas:  # e.g. the paper's 0.4, beside the rule's pick
        if v != lam:
            rows[f"merge@{v:g}"] = measured(f"merge@{v:g}", EXPR, v)
    for p in paths.values():
        record(ctx, p)
    return {
        "task": TASK,
        "method": "lora",
        "seed": seed,
        "lambda": lam,
        "rule": rule,
        "rows": rows,
        "base_validation": sweep["base"].get("validation", {}),
        "curve": [
            {
                k: p.get(k)
                for k in (
                    s.var,
                    "toxicity_toxic",
                    "toxic_share_toxic",
                    "toxicity_normal",
                    "nll_normal",
                    "empty_toxic",
                    "empty_normal",
                )
            }
            for p in curve
        ],
        "data": {
            "benign_train": len(data["benign"]),
            "toxic_train": len(data["toxic"]),
            **{f"{sp}_{k}": len(v) for sp, d in data["held"].items() for k, v in d.items()},
        },
        "train_seconds": {n: ctx.seconds.get(str(p)) for n, p in paths.items()},
        "train_cpu_seconds": {n: ctx.cpu_seconds.get(str(p)) for n, p in paths.items()},
        "sweep_seconds": sweep.get("seconds"),
        "sweep_dir": str(out),
        "modules": {n: str(p) for n, p in paths.items()},
    }


def run(ctx: Context) -> dict[str, Any]:
    kept = {c["seed"]: c for c in ctx.previous_cells()}
    for seed in ctx.recipe.seeds:
        kept[seed] = detox_cell(ctx, seed)
        ctx.save({"cells": [kept[k] for k in sorted(kept)]})
    return ctx.save({"cells": [kept[k] for k in sorted(kept)]})


SCENARIO = Scenario(
    name="detox-instruct",
    section="4.6",
    options=DetoxOptions,
    run=run,
    sections=sections,
    plot=plot,
    title="Detoxifying an instruction-tuned model (section 4.6, Tables 6 and 12)",
)
