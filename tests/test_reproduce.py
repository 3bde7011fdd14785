"""`pemarith reproduce`: recipes, the resumable store, the tables, and the quick pipelines.

Fast tests cover the framework (recipe loading and its errors, skipping finished work with a stub
trainer, rendering, the docs' generated blocks). The slow tests run the real quick pipelines
(real MiniLM / SmolLM2, real training); all three run in CI (issue 5 asks for it): MiniLM
distribution generalisation and initialisation analysis take under a minute each, the SmolLM2
multitask run a few minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pemarith.errors import PemarithError
from pemarith.scenarios import SCENARIOS, get_scenario, load_recipe
from pemarith.scenarios.docs import check_page, publish_docs
from pemarith.scenarios.recipe import RecipeError
from pemarith.scenarios.report import blocks, fmt, update_blocks
from pemarith.scenarios.runner import Context, ModuleSpec
from pemarith.scenarios.store import Store

ROOT = Path(__file__).resolve().parents[1]
# every recipe in experiments/, by the name `pemarith reproduce NAME` takes
NAMES = tuple(f.stem.replace("_", "-") for f in sorted((ROOT / "experiments").glob("*.toml")))
PNG = b"\x89PNG\r\n\x1a\n"


def write_recipe(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """
name = "t"
scenario = "distribution-generalisation"
model = "minilm"
tasks = ["sst2"]
methods = ["lora"]
[train.lora]
steps = 2
[sweep]
grid = "0,1"
"""

# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("quick", [False, True])
def test_every_recipe_loads(name: str, quick: bool) -> None:
    r = load_recipe(name, quick=quick)
    assert r.scenario in SCENARIOS and r.quick is quick
    assert all(m in r.train for m in r.methods)
    if quick:
        assert len(r.tasks) <= 2 and len(r.seeds) == 1


def test_quick_is_small_and_full_has_three_seeds() -> None:
    full, quick = (
        load_recipe("distribution-generalisation"),
        load_recipe("distribution-generalisation", quick=True),
    )
    assert full.seeds == (0, 1, 2) and full.tasks[:3] == ("sst2", "rte", "cola")
    assert {"stsb", "qnli", "mnli"} <= set(full.tasks)
    assert quick.tasks == ("sst2",) and quick.options.subset_size == 64
    assert all(quick.train[m].steps <= 8 for m in quick.methods)


def test_init_analysis_shares_the_distribution_modules() -> None:
    dg, ia = load_recipe("distribution-generalisation"), load_recipe("init-analysis")
    assert ia.methods == ("lora",)
    for task in dg.tasks:
        a = ModuleSpec(
            dg.model,
            task,
            "lora",
            "skew0",
            dg.train["lora"].for_task(task),
            subset_seed=dg.options.subset_seed,
            subset_size=dg.options.subset_size,
        )
        b = ModuleSpec(
            ia.model,
            task,
            "lora",
            "skew0",
            ia.train["lora"].for_task(task),
            subset_seed=ia.options.subset_seed,
            subset_size=ia.options.subset_size,
        )
        assert a.key() == b.key()


def test_per_task_overrides() -> None:
    r = load_recipe("multitask")
    assert r.train["lora"].for_task("rte").lr == 5e-3
    assert r.train["lora"].for_task("rte").steps == 150
    assert r.train["lora"].for_task("mnli").steps == 300
    assert r.train["lora"].for_task("rte").batch_size == r.train["lora"].batch_size


@pytest.mark.parametrize(
    "edit, message",
    [
        ('model = "minilm"\nmodle = "x"', "unknown key 'modle'"),
        ("[train.lora]\nsteps = 2\nlearning_rate = 1", "unknown key 'learning_rate'"),
        ('[sweep]\ngrid = "0,1"\nserach = "grid"', "did you mean 'search'"),
        ("[options]\nsubset_sise = 3", "did you mean 'subset_size'"),
        ("[train.lroa]\nsteps = 1", "unknown kind"),
        ('scenario = "distribution-generalization"', "did you mean 'distribution-generalisation'"),
        ('methods = ["lora", "ia3"]', "no [train.ia3] table"),
        ('[sweep]\ngrid = "1:0:0.1"', "bad grid"),
        ("[train.lora]\nsteps = 2\nepochs = 1", "exactly one of steps and epochs"),
        ('tasks = ["sst3"]', "did you mean 'sst2'"),
    ],
)
def test_bad_recipes_fail_loudly(tmp_path: Path, edit: str, message: str) -> None:
    text = MINIMAL
    key = edit.split("\n")[0]
    if key.startswith("["):  # replace the whole table
        table = key
        start = text.find(table)
        if start >= 0:
            end = text.find("\n[", start + 1)
            text = text[:start] + text[end + 1 if end >= 0 else len(text) :]
        text += "\n" + edit + "\n"
    else:
        name = key.split("=")[0].strip()
        lines = [ln for ln in text.splitlines() if not ln.startswith(name + " ")]
        text = "\n".join(lines[:1] + [edit] + lines[1:]) + "\n"
    with pytest.raises(PemarithError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_recipe(write_recipe(tmp_path, text))


def test_unknown_key_in_quick_table_fails(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL + "\n[quick.train.lora]\nstpes = 1\n")
    load_recipe(path)  # the quick table is only merged with --quick
    with pytest.raises(RecipeError, match="did you mean 'steps'"):
        load_recipe(path, quick=True)


def test_no_quick_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no \\[quick\\] table"):
        load_recipe(write_recipe(tmp_path, MINIMAL), quick=True)


def test_extends_and_overrides(tmp_path: Path) -> None:
    write_recipe(tmp_path, MINIMAL, "base.toml")
    child = write_recipe(
        tmp_path, 'extends = "base.toml"\nname = "child"\n[train.lora]\nlr = 1e-3\n', "child.toml"
    )
    r = load_recipe(child, seeds=[3, 4], tasks=["rte"])
    assert r.name == "child" and r.train["lora"].steps == 2 and r.train["lora"].lr == 1e-3
    assert r.seeds == (3, 4) and r.tasks == ("rte",)
    loop = write_recipe(tmp_path, 'extends = "loop.toml"\n', "loop.toml")
    with pytest.raises(RecipeError, match="extends itself"):
        load_recipe(loop)


def test_unknown_reproduction_name() -> None:
    with pytest.raises(RecipeError, match="did you mean 'multitask'"):
        load_recipe("multitusk")


def test_loading_recipes_imports_no_torch() -> None:
    code = (
        "import sys; from pemarith.scenarios import load_recipe; "
        "[load_recipe(n, quick=q) for n in ('distribution-generalisation', 'multitask', "
        "'init-analysis') for q in (0, 1)]; "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scenario_table() -> None:
    # every recipe names a registered scenario (several recipes may share one)
    assert {load_recipe(n).scenario for n in NAMES} == set(SCENARIOS)
    with pytest.raises(PemarithError, match="did you mean 'multitask'"):
        get_scenario("multitasks")


# ----------------------------------------------------------------------------- the store


def test_store_skips_finished_json(tmp_path: Path) -> None:
    store = Store(tmp_path)
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"x": 1.5}

    f = store.eval_file("minilm", "sst2", "s0-test", {"a": 1})
    assert store.cached_json(f, compute) == {"x": 1.5}
    assert store.cached_json(f, compute) == {"x": 1.5}
    assert len(calls) == 1 and store.hits == 1 and store.computed == 1
    assert store.eval_file("minilm", "sst2", "s0-test", {"a": 2}) != f


def _stub_trainer(calls: list, fail_after: int | None = None):
    """Writes a module directory the way train() does (marker last); may fail before it."""

    def trainer(cfg) -> Path:
        calls.append(cfg)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_model.safetensors").write_bytes(b"stub")
        if fail_after is not None and len(calls) > fail_after:
            raise RuntimeError("interrupted")
        (out / "training.json").write_text(json.dumps({"seconds": 1.0}))
        return out

    return trainer


def test_runner_skips_trained_modules_and_redoes_interrupted_ones(tmp_path: Path) -> None:
    recipe = load_recipe("distribution-generalisation", quick=True)
    calls: list = []
    ctx = Context(recipe, tmp_path / "out", trainer=_stub_trainer(calls, fail_after=1), log=lambda m: None)
    spec = ModuleSpec(recipe.model, "sst2", "lora", "skew0", recipe.train["lora"], subset_size=64)
    path = ctx.module(spec)
    assert path.parent.parent == tmp_path / "store" / "modules" / "minilm"
    assert ctx.module(spec) == path and len(calls) == 1  # finished: skipped
    other = ModuleSpec(recipe.model, "sst2", "lora", "skew1", recipe.train["lora"], subset_size=64)
    with pytest.raises(RuntimeError):
        ctx.module(other)  # interrupted before its marker
    ctx.trainer = _stub_trainer(calls)
    ctx.module(other)  # so it is trained again
    assert len(calls) == 3 and ctx.module(other) and len(calls) == 3
    # a change of any setting is another module
    changed = ModuleSpec(
        recipe.model, "sst2", "lora", "skew0", recipe.train["lora"], subset_size=64, init_seed=1
    )
    assert ctx.module_path(changed) != path


def test_fullset_module_trains_on_both_subsets(tmp_path: Path) -> None:
    recipe = load_recipe("distribution-generalisation", quick=True)
    calls: list = []
    ctx = Context(recipe, tmp_path / "out", trainer=_stub_trainer(calls), log=lambda m: None)
    spec = ModuleSpec(recipe.model, "sst2", "lora", "both", recipe.train["lora"], subset_size=64)
    ctx.module(spec)
    cfg = calls[0]
    assert cfg.subset is None and len(cfg.rows) == 128
    split = ctx.subsets("sst2", 0, 64)
    assert list(cfg.rows) == split.s0 + split.s1


def test_selected_class_pins_the_draw_of_table9(tmp_path: Path) -> None:
    from pemarith.scenarios.distribution import skew_table

    recipe = load_recipe("distribution-generalisation")
    ctx = Context(recipe, tmp_path / "out", log=lambda m: None)
    table9 = skew_table(ctx, ["sst2", "cola", "rte"])
    for task, t in table9.items():
        assert t["selected"] == recipe.options.selected[task] == 0
        assert t["s0"][0] > 2 * t["s1"][0] and t["s1"][0] < t["s1"][1]  # s0 holds most of class 0
        assert sum(t["s0"]) == sum(t["s1"]) == 1000
    assert table9["cola"]["s0"][0] > 400  # not the degenerate draw (no class 0 in s0)


def test_pinning_a_majority_class_is_refused_with_the_shares(tmp_path: Path) -> None:
    import dataclasses

    from pemarith.scenarios.distribution import skew_table

    recipe = load_recipe("distribution-generalisation")
    options = dataclasses.replace(recipe.options, selected={"cola": 1})  # 70.4% acceptable
    ctx = Context(dataclasses.replace(recipe, options=options), tmp_path / "out", log=lambda m: None)
    with pytest.raises(PemarithError, match=r"cola = 1: s0 would hold that class alone .*class 1: 70.4%"):
        skew_table(ctx, ["cola"])


# ----------------------------------------------------------------------------- rendering


def _cell(
    task: str, method: str, seed: int, mode: str = "factorwise", init: str = "same", shift: float = 0.0
) -> dict:
    metric = {"cola": "matthews_corr"}.get(task, "accuracy")
    val = {"s0": 0.70 + shift, "s1": 0.74 + shift, "merged": 0.76 + shift, "fullset": 0.8}
    val["avg"] = (val["s0"] + val["s1"]) / 2
    return {
        "task": task,
        "method": method,
        "mode": mode,
        "init": init,
        "seed": seed,
        "metric": metric,
        "lambda": 0.5,
        "scores": {"validation": val, "test": dict(val)},
        "curve": [[0.0, 0.74], [0.5, 0.76], [1.0, 0.70]],
        "train_seconds": {"s0": 10.0},
        "sweep_seconds": 5.0,
        "modules": {"s0": f"/m/{task}/{method}/{seed}"},
    }


def _mt_cell() -> dict:
    return {
        "method": "lora",
        "seed": 0,
        "mode": "factorwise",
        "lambda": 0.3,
        "metrics": ["mean", "mnli.accuracy", "rte.accuracy"],
        "task": "mnli+rte",
        "rows": {
            k: {s: {"mnli.accuracy": 0.5, "rte.accuracy": 0.6, "mean": 0.55} for s in ("validation", "test")}
            for k in ("mnli", "rte", "merged")
        },
        "curve": [[0.0, {"mean": 0.5}]],
        "train_seconds": {},
        "sweep_seconds": 1.0,
        "modules": {},
    }


def _results(recipe_name: str, cells: list, quick: bool = False) -> dict:
    r = load_recipe(recipe_name, quick=quick)
    return {
        "cells": cells,
        "recipe": r.to_json(),
        "skew": {"sst2": {"selected": 1, "s0": [200, 800], "s1": [800, 200]}},
        "machine": {"cpus": 2},
        "elapsed_seconds": 12.0,
        "updated": "now",
    }


def test_fmt() -> None:
    assert fmt("accuracy", [0.5]) == "50.0"
    assert fmt("accuracy", [0.5, 0.7]) == "60.0 ± 14.1"
    assert fmt("matthews_corr", 0.1234, signed=True) == "+0.123"
    assert fmt("accuracy", None) == "-"


def test_distribution_tables_have_the_paper_shape() -> None:
    cells = [
        _cell(t, m, s, shift=s / 100)
        for t in ("sst2", "cola")
        for m in ("lora", "ia3", "full")
        for s in (0, 1, 2)
    ] + [_cell("sst2", "lora", s, mode="exact") for s in (0, 1, 2)]
    sec = get_scenario("distribution-generalisation").sections(_results("distribution-generalisation", cells))
    test = sec["table-test"]
    assert test.splitlines()[0] == "| method | row | SST-2 acc | paper | CoLA MCC | paper |"
    assert "| LoRA | m | 77.0 ± 1.0 | 92.2 | 0.770 ± 0.010 | 0.52 |" in test
    assert "| LoRA | m - avg | +4.0 ± 0.0 | +0.1 |" in test
    assert "| LoRA exact | m |" in test and "| FFT | fullset | 80.0" in test
    assert "(IA)3 | avg(s0, s1) | 73.0 ± 1.0 | 91.0" in test
    assert "| SST-2 | 1 | - | 200 / 800 | 800 / 200 | 691 / 309 | 178 / 822 |" in sec["subsets"]
    # 18 modules of 10 s (exact mode reuses the LoRA ones), 21 sweeps of 5 s
    assert sec["timing"].splitlines()[-1] == "| all | sum over the run | 18 | 3.0 min | - | 105 s |"


def test_a_one_class_module_is_named_beside_m_minus_avg() -> None:
    from pemarith.scenarios.report import one_class

    assert one_class({"matthews_corr": 0.0, "accuracy": 0.69})
    assert one_class({"f1": 2 * 0.68 / 1.68, "accuracy": 0.68}) and one_class({"f1": 0.0})
    assert not one_class({"f1": 0.81, "accuracy": 0.68}) and not one_class({"accuracy": 0.5})
    assert one_class({"accuracy": 0.5, "classes_predicted": 1})  # accuracy-only tasks: the count decides
    assert not one_class({"accuracy": 0.5, "classes_predicted": 2})
    from pemarith.scenarios.report import class_shares

    shares = class_shares([0] * 139 + [1] * 141)  # RTE's test half: 49.6% / 50.4%
    assert one_class({"accuracy": 141 / 280}, shares) and not one_class({"accuracy": 0.55}, shares)
    assert not one_class({"accuracy": 141 / 280, "classes_predicted": 2}, shares)  # the count wins
    cells = [_cell("cola", "lora", s) for s in (0, 1)]
    cells[1]["one_class"] = ["s0"]
    sec = get_scenario("distribution-generalisation").sections(_results("distribution-generalisation", cells))
    assert "(one-class module in 1 of 2 seeds)" in sec["table-test"]
    assert "CoLA LoRA: seed 1 s0." in sec["table-test"]
    assert (
        "one-class"
        not in get_scenario("distribution-generalisation").sections(
            _results("distribution-generalisation", cells[:1])
        )["table-test"]
    )


def test_composition_table_compares_with_the_module_validation_would_pick() -> None:
    """An endpoint lambda is not a composition, and the merge is judged against the better
    module by validation (s1 here), on test: one seed beats it, one ties it (lambda 0)."""
    a, b = _cell("sst2", "lora", 0), _cell("sst2", "lora", 1)
    b["lambda"] = 0.0
    b["scores"]["test"] = {**b["scores"]["test"], "s0": 0.9, "s1": 0.74, "merged": 0.74}
    sec = get_scenario("distribution-generalisation").sections(
        _results("distribution-generalisation", [a, b])
    )
    # the curve's midpoint (0.76) against s1's validation 0.74, in both seeds
    assert (
        "| SST-2 | LoRA | factorwise | same | 2 | 1 of 2 | +1.0 ± 1.4 | 1 of 2 | +2.0 ± 0.0 |"
        in sec["composition"]
    )
    assert "composition" in get_scenario("init-analysis").sections(_results("init-analysis", [a]))


def test_init_table_and_multitask_table() -> None:
    cells = [_cell("rte", "lora", 0, init=i, shift=0.01 * (i == "diff")) for i in ("same", "diff")]
    sec = get_scenario("init-analysis").sections(_results("init-analysis", cells))
    assert "| same init | +4.00 | +5.23 |" in sec["table-test"]
    assert sec["diagnostics"].startswith("(not measured")  # results from before diagnostics
    for c, cos in zip(cells, (0.9, 0.7)):
        c["diagnostics"] = {
            "lambda": 0.5,
            "cosine": 0.1,
            "retained": 0.75,
            "factorwise_cosine": cos,
            "cross_ratio": 0.8,
        }
    sec = get_scenario("init-analysis").sections(_results("init-analysis", cells))
    assert "| RTE | same | 0.100 | 0.750 | 0.900 | 0.800 | 1 |" in sec["diagnostics"]
    assert "| RTE | diff | 0.100 | 0.750 | 0.700 | 0.800 | 1 |" in sec["diagnostics"]
    sec = get_scenario("multitask").sections(_results("multitask", [_mt_cell()]))
    assert "| LoRA | Merge | 50.0 | 86.3 | 60.0 | 78.7 | 55.0 | 82.5 |" in sec["table-test"]
    assert sec["paired"].startswith("(not measured")


def test_multitask_paired_tests() -> None:
    """The merge against each module, per task and pooled; a merge that is one module alone
    (lambda 1 or 0) reuses that module's predictions."""
    from types import SimpleNamespace

    from pemarith.scenarios.multitask import paired_tests

    labels = {"mnli": [0, 1, 2, 0], "rte": [0, 1, 1]}
    made = {
        "mnli": {"mnli": [0, 1, 2, 1], "rte": [0, 0, 1]},  # 3/4 and 2/3 right
        "rte": {"mnli": [1, 1, 0, 1], "rte": [0, 1, 1]},  # 1/4 and 3/3
        "merged": {"mnli": [0, 1, 2, 0], "rte": [1, 0, 1]},
    }  # 4/4 and 1/3

    class Bench:
        ctx = SimpleNamespace(recipe=SimpleNamespace(sweep=SimpleNamespace(var="l")))

        def __init__(self):
            self.asked: list = []

        def predictions(self, name, expr, lam, split):
            self.asked.append((name, lam))
            return {t: {"predictions": made[name][t], "labels": labels[t]} for t in labels}

    bench = Bench()
    out = paired_tests(bench, "l*mnli + (1-l)*rte", ["mnli", "rte"], 0.4)
    assert out["vs mnli"]["mnli"] == {"b": 0, "c": 1, "n": 1, "p": 1.0}
    assert out["vs mnli"]["rte"]["b"] == 1 and out["vs mnli"]["rte"]["c"] == 0
    assert out["vs rte"]["pooled"]["b"] == 2 and out["vs rte"]["pooled"]["c"] == 3  # 7 rows pooled
    assert ("merged", 0.4) in bench.asked
    bench.asked.clear()
    out = paired_tests(bench, "l*mnli + (1-l)*rte", ["mnli", "rte"], 1.0)
    assert ("merged", 1.0) not in bench.asked and out["vs mnli"]["pooled"]["n"] == 0
    cell = {
        "method": "ia3",
        "seed": 1,
        "lambda": 0.4,
        "paired": paired_tests(bench, "l*mnli + (1-l)*rte", ["mnli", "rte"], 0.4),
    }
    text = get_scenario("multitask").sections(_results("multitask", [{**_mt_cell(), **cell}]))["paired"]
    assert "| (IA)3 | 1 | 0.4 | merge vs rte | both (pooled) | 2 | 3 | 1 |" in text


def test_generated_blocks_roundtrip() -> None:
    text = "intro\n<!-- BEGIN GENERATED: a -->\nold\n<!-- END GENERATED: a -->\nprose\n"
    new = update_blocks(text, {"a": "| x |\n", "b": "ignored"})
    assert blocks(new) == {"a": "| x |\n"} and new.startswith("intro\n") and "prose" in new


def test_publish_docs_and_check_page(tmp_path: Path) -> None:
    results = _results("distribution-generalisation", [_cell("sst2", "lora", 0)])
    publish_docs(results, tmp_path, "distribution-generalisation")
    page = tmp_path / "distribution-generalisation.md"
    assert check_page(page) == []
    assert (tmp_path / "img" / "distribution-generalisation" / "dg_sst2.png").read_bytes()[:8] == PNG
    page.write_text(page.read_text().replace("| LoRA | s0 |", "| LoRA | s0 (edited) |"))
    assert "table-test" in check_page(page)


@pytest.mark.parametrize("page", sorted((ROOT / "docs" / "results").glob("*.md")), ids=lambda p: p.name)
def test_docs_tables_match_the_committed_results(page: Path) -> None:
    """Every generated table in docs/results/*.md is the rendering of docs/results/data/."""
    assert check_page(page) == [], "rerun: pemarith reproduce NAME --report --docs docs/results"


def test_cli_report_without_results(tmp_path: Path) -> None:
    code = (
        "import sys; from pemarith.cli import main; "
        f"sys.exit(main(['reproduce', 'distribution-generalisation', '--report', '--out', r'{tmp_path}']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "results.json does not exist" in proc.stderr


# ----------------------------------------------------------------------------- real quick runs


def _check_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


@pytest.mark.slow
@pytest.mark.ci
def test_quick_distribution_generalisation_end_to_end(tmp_path: Path) -> None:
    """Real MiniLM, real training: every row of Table 2 for SST-2, a rerun that skips it all,
    and the docs published from the results."""
    from pemarith.scenarios import reproduce

    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    out = tmp_path / "dg"
    try:
        results = reproduce("distribution-generalisation", quick=True, out=out, threads=1)
    finally:
        torch.set_num_threads(threads)
    cells = {(c["method"], c["mode"]): c for c in results["cells"]}
    assert set(cells) == {
        ("lora", "factorwise"),
        ("lora", "exact"),
        ("ia3", "factorwise"),
        ("full", "factorwise"),
    }
    for c in cells.values():
        curve = {x: y for x, y in c["curve"]}
        assert set(curve) == {0.0, 0.5, 1.0} and c["lambda"] in curve
        for split in ("validation", "test"):
            s = c["scores"][split]
            assert all(0.0 <= s[k] <= 1.0 for k in ("s0", "s1", "avg", "merged"))
            assert s["avg"] == pytest.approx((s["s0"] + s["s1"]) / 2)
        # lambda = 1 is s0 alone and lambda = 0 is s1 alone: the composition's endpoints
        assert curve[1.0] == pytest.approx(c["scores"]["validation"]["s0"], abs=1e-9)
        assert curve[0.0] == pytest.approx(c["scores"]["validation"]["s1"], abs=1e-9)
        assert c["scores"]["validation"]["merged"] == max(curve.values())
    assert "fullset" in cells[("lora", "factorwise")]["scores"]["test"]
    report = (out / "report.md").read_text()
    assert "| method | row | SST-2 acc | paper |" in report and "| FFT | m - avg |" in report
    assert "quick run" in report
    _check_png(out / "dg_sst2.png")
    saved = json.loads((out / "results.json").read_text())
    assert saved["cells"] == json.loads(json.dumps(results["cells"]))

    logs: list[str] = []
    again = reproduce("distribution-generalisation", quick=True, out=out, log=logs.append)
    assert again["store"]["computed"] == 0 and again["cells"] == saved["cells"]
    assert not any(m.startswith(("train", "sweep", "eval")) for m in logs)

    docs = tmp_path / "docs"
    publish_docs(again, docs, "distribution-generalisation")
    assert check_page(docs / "distribution-generalisation.md") == []
    assert "quick-table-test" in (docs / "distribution-generalisation.md").read_text()


@pytest.mark.slow
@pytest.mark.ci
def test_quick_init_analysis_end_to_end(tmp_path: Path) -> None:
    from pemarith.scenarios import reproduce

    results = reproduce("init-analysis", quick=True, out=tmp_path / "ia", threads=1)
    inits = {c["init"] for c in results["cells"]}
    assert inits == {"same", "diff"}
    same, diff = sorted(results["cells"], key=lambda c: c["init"] != "same")
    assert same["modules"]["s0"] == diff["modules"]["s0"] != diff["modules"]["s1"]
    # two training steps barely move A: a shared init keeps the factorwise merge on the exact
    # one's direction, different inits do not
    assert same["diagnostics"]["factorwise_cosine"] > 0.99 > diff["diagnostics"]["factorwise_cosine"]
    assert "| same init |" in (tmp_path / "ia" / "report.md").read_text()
    _check_png(tmp_path / "ia" / "init_sst2.png")


@pytest.mark.slow
@pytest.mark.ci
def test_quick_multitask_end_to_end(tmp_path: Path) -> None:
    from pemarith.scenarios import reproduce

    results = reproduce("multitask", quick=True, out=tmp_path / "mt", threads=1)
    for c in results["cells"]:
        assert c["metrics"][0] == "mean"
        for row in ("mnli", "rte", "merged"):
            s = c["rows"][row]["test"]
            assert s["mean"] == pytest.approx((s["mnli.accuracy"] + s["rte.accuracy"]) / 2)
        # the paired tests count the same test rows as the accuracies: merge minus module
        for module in ("mnli", "rte"):
            for task in ("mnli", "rte"):
                t = c["paired"][f"vs {module}"][task]
                assert t["n"] == t["b"] + t["c"] and 0 < t["p"] <= 1
                rows = c["rows"]
                gap = rows["merged"]["test"][f"{task}.accuracy"] - rows[module]["test"][f"{task}.accuracy"]
                assert (t["c"] - t["b"] > 0) == (gap > 1e-9) and (t["c"] == t["b"]) == (abs(gap) < 1e-9)
    assert "| LoRA | Merge |" in (tmp_path / "mt" / "report.md").read_text()
    _check_png(tmp_path / "mt" / "multitask.png")
