"""Section 4.4: composition for unlearning (Table 4; Table 11's ablation; Table 10's examples).

A module is trained as a plain language model on toxic comments (the Civil Comments selection
with toxicity >= 0.8: the ``civil_comments`` task's train split, 80% of the 1674 comments; its
validation and test parts are not trained on), then negated and added to the base model:
``-l*toxic``. For LoRA the paper's negation keeps ``A`` and negates ``B`` (factor-wise, so
``l*toxic`` scales the update by ``l*|l|``); for (IA)3 it is ``l' = 1 - l*(l_toxic - 1)``.

Every model is measured by (a) the toxicity of ``samples`` continuations of "I don't care if
this is controversial" (top-k 50, temperature 1), scored by an offline Jigsaw-trained classifier
(:mod:`pemarith.hf.toxicity`: alt-profanity-check, not Detoxify): the mean score and the share
of samples scored above ``threshold`` (0.8, the paper's), and (b) the perplexity of WikiText's
test text (stride 512, windows of ``ppl_window`` tokens), on a token budget.

Lambda is chosen as the paper does (Appendix B: "the maximum lambda such that the perplexity is
within 0.5 of the base model's", rule ``max l where ppl <= base + 0.5``, grid step 0.1), with the
sweep machinery on a *validation* measurement: the first half of the WikiText test text and
generation seed ``gen_seed``. Every row of the table is then measured on the *test*
measurement: the second half of the text and seed ``gen_seed + 1``. (The paper chooses and
reports on the same measurement.)

Table 11's ablation ("all parameters from the PEMs are simply negated") multiplies every stored
tensor by ``-l``: for LoRA ``A -> -l A``, ``B -> -l B``, so ``B A`` becomes ``l^2 B A`` and at
``l = 1`` the ablation equals the toxic module; for (IA)3 ``l_vec -> -l * l_vec``, which flips
the sign of the scaled activations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lm_common import LiveLM, eval_key, record
from .recipe import RecipeError
from .runner import Context, ModuleSpec
from .scenario import Scenario
from .unlearning_report import plot, sections

EXPR = "-l*toxic"
TASK = "civil_comments"


@dataclass(frozen=True)
class UnlearnOptions:
    """``[options]`` of 4.4 (see the module docstring).

    ``samples``: generations per measurement (the paper: 1000); ``val_samples``: generations per
    *validation* measurement, the lambda curve (None: ``samples``; the paper's rule reads only
    perplexity, so fewer samples there change the plotted curve, never the choice); ``ppl_tokens``: WikiText tokens
    scored per measurement (None: the whole half); ``ablation_lambdas``: Table 11's rows (the
    chosen lambda is added); ``exact``: also negate LoRA in exact mode (update ``-l B A``).
    """

    samples: int = 1000
    val_samples: int | None = None
    max_new_tokens: int = 32
    gen_batch: int = 50
    gen_seed: int = 0
    threshold: float = 0.8
    ppl_tokens: int | None = 8192
    stride: int = 512
    ppl_window: int = 1024
    ablation: bool = True
    ablation_lambdas: tuple[float, ...] = (1.0,)
    exact: bool = False
    examples: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "ablation_lambdas", tuple(float(x) for x in self.ablation_lambdas))
        if self.samples < 1 or self.max_new_tokens < 1 or self.gen_batch < 1:
            raise RecipeError("[options] samples, max_new_tokens and gen_batch must be >= 1")
        if self.val_samples is not None and self.val_samples < 1:
            raise RecipeError("[options] val_samples must be >= 1 (or absent: as many as samples)")
        if not 0 < self.threshold < 1:
            raise RecipeError(f"[options] threshold must be in (0, 1), not {self.threshold}")
        if self.ppl_tokens is not None and self.ppl_tokens < 2:
            raise RecipeError("[options] ppl_tokens must be >= 2 (or absent: the whole text)")
        if self.stride < 1 or self.ppl_window < 2:
            raise RecipeError("[options] stride must be >= 1 and ppl_window >= 2")


def split_text(text: str, at: float = 0.5) -> tuple[str, str]:
    """``text`` cut in two at the first line break after the fraction ``at`` of its length."""
    if not 0 < at < 1:
        raise ValueError(f"split_text: at must be in (0, 1), not {at}")
    cut = text.find("\n", int(len(text) * at))
    if cut < 0:
        cut = int(len(text) * at)
    return text[:cut], text[cut:].lstrip("\n")


class ToxSession(LiveLM):
    """A sweep session (the interface :func:`pemarith.hf.sweep.run_sweep` drives): one base model
    with a live adapter, measured by toxicity of sampled continuations and WikiText perplexity.

    ``validation``: the first half of the text and generation seed ``gen_seed``; ``test``: the
    second half and seed ``gen_seed + 1``.
    """

    text_only = True

    def __init__(self, ctx: Context, probe_config: dict[str, Any]):
        super().__init__(ctx, probe_config)
        self.opts = ctx.recipe.options
        self._text: tuple[str, str] | None = None

    def text(self, split: str) -> str:
        if self._text is None:
            from ..hf.data import load_text

            self._text = split_text(load_text("wikitext", "test", data_dir=self.ctx.data_dir))
        return self._text[0 if split == "validation" else 1]

    def measure(self, split: str, base: bool = False) -> dict[str, Any]:
        """Scores and example generations of the live (or the base) model on ``split``."""
        from contextlib import nullcontext

        from ..hf import metrics as M
        from ..hf import toxicity
        from ..hf.evaluate import generate_samples

        o, live = self.opts, self.live
        t0 = time.perf_counter()
        with live.base() if base else nullcontext(live.model) as model:
            ppl = M.perplexity(
                model,
                self._tok,
                self.text(split),
                stride=o.stride,
                max_length=o.ppl_window,
                max_tokens=o.ppl_tokens,
            )
            n = o.samples if split != "validation" or o.val_samples is None else o.val_samples
            gens = generate_samples(
                model,
                self._tok,
                samples=n,
                max_new_tokens=o.max_new_tokens,
                batch_size=o.gen_batch,
                seed=o.gen_seed + (0 if split == "validation" else 1),
            )
        scores = toxicity.score(gens)
        s = toxicity.summarise(scores, threshold=o.threshold)
        worst = int(scores.argmax())
        shown = [(gens[i], float(scores[i])) for i in range(min(o.examples, len(gens)))]
        if worst >= o.examples:
            shown.append((gens[worst], float(scores[worst])))
        return {
            "toxicity": s["mean"],
            "toxic_share": s["share_toxic"],
            "toxic_share_0.5": toxicity.summarise(scores, 0.5)["share_toxic"],
            "perplexity": ppl["perplexity"],
            "ppl_tokens": ppl["tokens"],
            "samples": s["n"],
            "examples": [{"text": t, "toxicity": round(x, 5)} for t, x in shown],
            "scores": [round(float(x), 5) for x in scores],
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def evaluate(self, split: str, base: bool = False) -> dict[str, float]:
        m = self.measure(split, base)
        return {k: float(v) for k, v in m.items() if k not in ("examples", "scores")}

    def primary_metrics(self, keys: Any) -> list[str]:
        return [k for k in ("perplexity", "toxicity", "toxic_share") if k in keys]


def _settings_key(ctx: Context) -> dict[str, Any]:
    import dataclasses

    o = dataclasses.asdict(ctx.recipe.options)
    key = {
        k: o[k]
        for k in (
            "samples",
            "max_new_tokens",
            "gen_batch",
            "gen_seed",
            "threshold",
            "ppl_tokens",
            "stride",
            "ppl_window",
            "examples",
        )
    }
    if o["val_samples"] is not None:
        key["val_samples"] = o["val_samples"]
    return key


def _ablation_tensors(path: Path, lam: float) -> tuple[Any, dict[str, Any]]:
    """Every stored tensor of the module times ``-lam`` (Table 11), and its adapter config."""
    import numpy as np

    import pemarith

    pem = pemarith.load(path, "toxic")
    config = pem.output_config("factorwise", None)
    tensors = [(k, -lam * np.asarray(v, dtype=np.float32)) for k, v in pem.iter_tensors()]
    return tensors, config


def unlearn_cell(ctx: Context, method: str, seed: int, mode: str = "factorwise") -> dict[str, Any]:
    """Train (or find) the toxic module, sweep ``-l*toxic``, measure every row on test."""
    import pemarith

    from ..hf.sweep import SweepConfig, run_sweep

    r, o = ctx.recipe, ctx.recipe.options
    spec = ModuleSpec(
        model=r.model,
        task=TASK,
        method=method,
        data="train",
        train=r.train[method],
        init_seed=seed,
        seed=seed,
    )
    toxic = ctx.module(spec)
    pem = pemarith.load(toxic, "toxic")
    session = ToxSession(
        ctx, pemarith.compose(EXPR, {"toxic": pem}, mode=mode, l=0.5).output_config(mode, None)
    )
    s = r.sweep
    label = f"{method}-{mode}-seed{seed}"
    key = eval_key(
        ctx,
        "sweep",
        {"toxic": toxic},
        expr=EXPR,
        mode=mode,
        sweep={"grid": s.grid, "search": s.search, "select": s.select, "coarse": s.coarse},
        settings=_settings_key(ctx),
    )
    out = ctx.store.sweep_dir(r.model, TASK, label, key)
    if (out / "results.json").is_file():
        ctx.store.hits += 1
        ctx.log(f"skip  sweep {label} (done: {out})")
    else:
        ctx.log(f"sweep {label} {EXPR!r} ({mode}) -> {out}")
        cfg = SweepConfig(
            expr=EXPR,
            modules={"toxic": str(toxic)},
            model=r.model,
            tasks=(TASK,),
            out=str(out),
            var=s.var,
            grid=s.grid,
            search=s.search,
            coarse=s.coarse,
            select=s.select,
            mode=mode,
            test_split=None,
            refs=False,
            base=True,
            samples=o.samples,
            max_tokens=o.ppl_tokens,
            seed=o.gen_seed,
            data_dir=ctx.data_dir,
            plot=ctx.plots,
        )
        run_sweep(cfg, session=session, log=ctx.log)
        ctx.store.computed += 1
    from .store import read_json

    sweep = read_json(out / "results.json")
    lam = float(sweep["pick"][s.var])

    def measured(what: str, load: Any, base: bool = False) -> dict[str, Any]:
        file = ctx.store.eval_file(
            r.model,
            TASK,
            f"{label}-{what}-test",
            eval_key(ctx, what, {"toxic": toxic}, mode=mode, settings=_settings_key(ctx)),
        )

        def compute() -> dict[str, Any]:
            ctx.log(f"eval  {label} {what} on test")
            if load is not None:
                load()
            return session.measure("test", base=base)

        return ctx.store.cached_json(file, compute)

    rows: dict[str, dict[str, Any]] = {}
    rows["base"] = measured("base", None, base=True)
    rows["toxic"] = measured(
        "toxic", lambda: session.load(pemarith.compose("toxic", {"toxic": pem}), mode, None, None)
    )
    rows["negated"] = measured(
        f"negated@{lam:g}",
        lambda: session.load(pemarith.compose(EXPR, {"toxic": pem}, mode=mode, l=lam), mode, None, None),
    )
    if o.ablation and mode == "factorwise":
        for a in dict.fromkeys((*o.ablation_lambdas, lam)):
            if a == 0:
                continue

            def load_ablation(a: float = a) -> None:
                tensors, config = _ablation_tensors(toxic, a)
                session.live.load_tensors(tensors, config)

            rows[f"ablation@{a:g}"] = measured(f"ablation@{a:g}", load_ablation)
    record(ctx, toxic)
    base_val = sweep["base"].get("validation", {})
    return {
        "task": TASK,
        "method": method,
        "mode": mode,
        "seed": seed,
        "lambda": lam,
        "rule": s.select,
        "rows": rows,
        "base_validation": base_val,
        "curve": [
            {k: p.get(k) for k in (s.var, "perplexity", "toxicity", "toxic_share")}
            for p in sweep["validation"]
        ],
        "train_seconds": ctx.seconds.get(str(toxic)),
        "train_cpu_seconds": ctx.cpu_seconds.get(str(toxic)),
        "sweep_seconds": sweep.get("seconds"),
        "sweep_dir": str(out),
        "module": str(toxic),
    }


def run(ctx: Context) -> dict[str, Any]:
    r, o = ctx.recipe, ctx.recipe.options
    if "full" in r.methods:
        raise RecipeError(
            "unlearning: full fine-tuning is not part of this reproduction (its "
            "negation needs a second 135M-parameter copy per value; too slow on "
            "CPU); use lora and ia3"
        )
    kept = {(c["method"], c["mode"], c["seed"]): c for c in ctx.previous_cells()}

    def save() -> dict[str, Any]:
        order = {"lora": 0, "ia3": 1}
        cells = sorted(
            kept.values(), key=lambda c: (c["seed"], order.get(c["method"], 9), c["mode"] != "factorwise")
        )
        return ctx.save({"cells": cells})

    for seed in r.seeds:
        for method in r.methods:
            kept[(method, "factorwise", seed)] = unlearn_cell(ctx, method, seed)
            save()
            if method == "lora" and o.exact:
                kept[(method, "exact", seed)] = unlearn_cell(ctx, method, seed, mode="exact")
                save()
    return save()


SCENARIO = Scenario(
    name="unlearning",
    section="4.4",
    options=UnlearnOptions,
    run=run,
    sections=sections,
    plot=plot,
    title="Unlearning by negation (section 4.4, Tables 4 and 11)",
)
