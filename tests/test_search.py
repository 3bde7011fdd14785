"""``pemarith search``: Optuna finds a known optimum, trials.csv matches separate compose + eval on a
tiny BERT, an interrupted search resumes without evaluating anything twice, bad input is one line."""

from __future__ import annotations

import csv
import json
import math

import pytest

pytest.importorskip("optuna")

from test_sweep import PNG_MAGIC, _data_dir, _tiny_lora, tiny_bert_dir  # noqa: F401

import pemarith
from pemarith.errors import PemarithError
from pemarith.hf.search import objective_value, params_key, run_search
from pemarith.hf.search_config import SearchConfig, parse_var

OPT = {"x": 0.3, "y": 0.6}


class FakeSession:
    """Scores from the loaded composition's coefficients: accuracy peaks at a = 0.3, b = 0.6."""

    text_only = False

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.terms: dict[str, float] = {}
        self.evaluated: list[tuple[str, tuple]] = []

    def load(self, pem, mode, rank, keep):
        list(pem.iter_tensors(mode=mode, rank=rank, keep=keep))  # the composition must be valid
        self.terms = dict(pem.terms)

    def evaluate(self, split, base=False):
        if self.fail_after is not None and len(self.evaluated) >= self.fail_after:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a search
        a, b = self.terms.get("a", 0.0), self.terms.get("b", 0.0)
        self.evaluated.append((split, (round(a, 8), round(b, 8))))
        return {"accuracy": 0.9 - (a - 0.3) ** 2 - (b - 0.6) ** 2, "loss": (a - 0.2) ** 2 + (b - 0.1) ** 2}

    def primary_metrics(self, keys):
        return ["accuracy"]


def _config(adapters, out, **kw):
    base = {
        "expr": "x*a + y*b",
        "modules": {"a": str(adapters["a"]), "b": str(adapters["b"])},
        "model": "fake",
        "tasks": ("sst2",),
        "out": str(out),
        "variables": ("x=0:1:0.1", "y=0:1:0.1"),
        "budget": 20,
        "sampler": "tpe",
        "plot": False,
    }
    return SearchConfig(**{**base, **kw})


def _quiet(m):
    return None


def test_grid_finds_the_known_optimum(adapters, tmp_path):
    session = FakeSession()
    cfg = _config(adapters, tmp_path / "g", sampler="grid", budget=500, plot=True)
    result = run_search(cfg, session=session, log=_quiet)
    assert result.best.params == OPT
    assert len(result.trials) == 121 and result.notes  # the budget is capped at the grid's size
    assert len({params_key(t.params) for t in result.trials}) == 121  # every point once
    assert result.test["accuracy"] == pytest.approx(0.9)
    assert len(session.evaluated) == 121 + 1  # + the best on test
    rows = list(csv.reader((tmp_path / "g" / "trials.csv").open()))
    assert rows[0] == ["trial", "x", "y", "accuracy", "loss", "objective", "seconds"] and len(rows) == 122
    summary = json.loads((tmp_path / "g" / "results.json").read_text())
    assert summary["best"]["params"] == OPT and summary["engine"] == "local"
    assert summary["sampler"] == "grid" and summary["seed"] == 0 and len(summary["trials"]) == 121
    assert summary["best"]["validation"]["accuracy"] == pytest.approx(0.9)
    assert summary["best"]["test"]["accuracy"] == pytest.approx(0.9)
    for name in ("search_history.png", "search_vars.png"):
        assert (tmp_path / "g" / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_samplers_approach_the_optimum(adapters, tmp_path, sampler):
    pytest.importorskip("cmaes") if sampler == "cmaes" else None
    cfg = _config(
        adapters,
        tmp_path / sampler,
        sampler=sampler,
        budget=40,
        variables=("x=0:1", "y=0:1"),
        test_split=None,
    )
    result = run_search(cfg, session=FakeSession(), log=_quiet)
    assert result.best.scores["accuracy"] > 0.9 - 0.02
    assert math.dist([result.best.params["x"], result.best.params["y"]], [0.3, 0.6]) < 0.15


def test_loss_is_minimised_and_l1_penalises(adapters, tmp_path):
    result = run_search(
        _config(adapters, tmp_path / "loss", sampler="grid", objective="loss"),
        session=FakeSession(),
        log=_quiet,
    )
    assert result.direction == "minimize" and result.best.params == {"x": 0.2, "y": 0.1}
    heavy = run_search(
        _config(adapters, tmp_path / "l1", sampler="grid", budget=121, l1=1.0),
        session=FakeSession(),
        log=_quiet,
    )
    # accuracy - mean(|x|, |y|): the optimum moves to (0.3 - 0.25, 0.6 - 0.25), on the grid (0, 0.3)..
    assert heavy.best.params["x"] < 0.3 and heavy.best.params["y"] < 0.6
    for t in heavy.trials:
        assert t.objective == pytest.approx(
            t.scores["accuracy"] - (abs(t.params["x"]) + abs(t.params["y"])) / 2
        )
    assert objective_value(1.0, {"x": -2.0}, 0.5, "minimize") == 2.0


def test_resume_after_an_interruption_evaluates_nothing_twice(adapters, tmp_path):
    whole = run_search(_config(adapters, tmp_path / "whole"), session=FakeSession(), log=_quiet)
    out = tmp_path / "resumed"
    first = FakeSession(fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        run_search(_config(adapters, out), session=first, log=_quiet)
    with open(out / "records.jsonl", "a") as f:
        f.write('{"key": "{\\"x\\": ')  # a torn last line (killed mid-write) is ignored
    second = FakeSession()
    result = run_search(_config(adapters, out), session=second, log=_quiet)
    assert len(first.evaluated) == 7
    assert not set(first.evaluated) & set(second.evaluated), "a finished trial was evaluated again"
    assert len(first.evaluated) + len(second.evaluated) == result.evaluations + 7
    # the replayed study ends as the uninterrupted one did
    assert [t.params for t in result.trials] == [t.params for t in whole.trials]
    assert result.best.params == whole.best.params and result.test == whole.test
    third = FakeSession()
    again = run_search(_config(adapters, out), session=third, log=_quiet)
    assert third.evaluated == [] and again.evaluations == 0
    # a larger budget continues the same study
    more = FakeSession()
    longer = run_search(_config(adapters, out, budget=25), session=more, log=_quiet)
    assert [t.params for t in longer.trials[:20]] == [t.params for t in whole.trials]
    assert 0 < len(more.evaluated) <= 5 + 1


def test_another_search_in_the_directory_is_refused(adapters, tmp_path):
    run_search(_config(adapters, tmp_path / "s", budget=2), session=FakeSession(), log=_quiet)
    with pytest.raises(PemarithError, match="holds another search.*seed"):
        run_search(_config(adapters, tmp_path / "s", budget=2, seed=1), session=FakeSession(), log=_quiet)
    s = FakeSession()
    run_search(_config(adapters, tmp_path / "s", budget=2, seed=1, restart=True), session=s, log=_quiet)
    assert len(s.evaluated) == 2 + 1


@pytest.mark.parametrize(
    "text, match",
    [
        ("x", "NAME=LO:HI"),
        ("x=1", "NAME=LO:HI"),
        ("x=a:b", "numbers"),
        ("x=1:0", "LO < HI"),
        ("x=0:1:0", "STEP"),
        ("x=0:1:2", "STEP"),
        ("x=0:inf", "NAME=LO:HI"),
        ("1x=0:1", "NAME=LO:HI"),
    ],
)
def test_bad_var(text, match):
    with pytest.raises(PemarithError, match=match):
        parse_var(text)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"variables": ("x=0:1",)}, "unknown name 'y'.*--var y=LO:HI"),
        ({"variables": ("x=0:1", "y=0:1", "z=0:1")}, "--var 'z' does not occur"),
        ({"variables": ("x=0:1", "a=0:1")}, "also a module"),
        ({"variables": ("x=0:1", "x=0:2")}, "given twice"),
        ({"budget": 0}, "--budget must be a positive integer"),
        ({"sampler": "tpee"}, "unknown --sampler 'tpee'.*did you mean 'tpe'"),
        ({"sampler": "grid", "variables": ("x=0:1", "y=0:1")}, "grid needs a step for --var x"),
        ({"objective": "acuracy"}, "unknown metric 'acuracy'"),
        ({"l1": -1.0}, "--l1"),
        ({"rank": 4}, "--rank needs --mode exact"),
    ],
)
def test_bad_input_is_a_clear_error(adapters, tmp_path, kw, match):
    with pytest.raises(PemarithError, match=match):
        run_search(_config(adapters, tmp_path / "bad", **kw), session=FakeSession(), log=_quiet)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--var", "x=1:0"], "LO < HI"),
        (["--var", "x"], "NAME=LO:HI"),
        (["--budget", "0"], "at least 1"),
        (["--budget", "many"], "not an integer"),
        (["--var", "z=0:1"], "--var 'z' does not occur"),
        (["--workers", "2"], "--workers needs --ray"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(adapters, tmp_path, capsys, extra, match):
    from pemarith.cli import main

    argv = [
        "search",
        "x*a + y*b",
        "-m",
        f"a={adapters['a']}",
        "-m",
        f"b={adapters['b']}",
        "--model",
        "fake",
        "--task",
        "sst2",
        "--var",
        "x=0:1",
        "--var",
        "y=0:1",
        *extra,
        "-o",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("pemarith: error:")
    assert match in err
    assert not (tmp_path / "o").exists()  # nothing on disk


def test_every_trial_equals_a_separate_compose_and_eval(tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    from pemarith.cli import main
    from pemarith.hf.evaluate import evaluate

    a = _tiny_lora(tiny_bert_dir, tmp_path / "a", 1)
    b = _tiny_lora(tiny_bert_dir, tmp_path / "b", 2)
    out = tmp_path / "out"
    argv = [
        "search",
        "x*a + y*b",
        "-m",
        f"a={a}",
        "-m",
        f"b={b}",
        "--keep",
        "a",
        "--model",
        str(tiny_bert_dir),
        "--task",
        "sst2",
        "--var",
        "x=-1:2",
        "--var",
        "y=-1:2",
        "--budget",
        "4",
        "--limit",
        "24",
        "--data-dir",
        str(data),
        "--objective",
        "loss",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert "best      trial" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4
    for row in rows:
        pem = pemarith.compose("x*a + y*b", {"a": a, "b": b}, x=float(row["x"]), y=float(row["y"]))
        ref = evaluate(
            str(tiny_bert_dir),
            "sst2",
            "validation",
            pem=pem,
            data_dir=data,
            limit=24,
            progress=False,
            save_options={"keep": "a"},
        )
        for metric, value in ref["metrics"].items():
            if isinstance(value, float) and metric in row:
                assert float(row[metric]) == pytest.approx(value, abs=1e-9), metric
        assert float(row["loss"]) > 0 and float(row["objective"]) == pytest.approx(float(row["loss"]))
    summary = json.loads((out / "results.json").read_text())
    assert summary["objective"]["direction"] == "minimize" and set(summary["best"]) >= {"validation", "test"}
    assert main(argv) == 0  # a rerun reads everything back
    assert "0 evaluated, 5 read back" in capsys.readouterr().out


class PerplexitySession(FakeSession):
    """A session whose first metric is minimised: perplexity, lowest at a = 0.3, b = 0.6."""

    def evaluate(self, split, base=False):
        scores = super().evaluate(split, base)
        return {"perplexity": 10.0 + 100.0 * (0.9 - scores["accuracy"])}

    def primary_metrics(self, keys):
        return ["perplexity"]


def test_the_direction_follows_the_metric(adapters, tmp_path):
    session = PerplexitySession()
    result = run_search(
        _config(adapters, tmp_path / "p", sampler="grid", budget=121), session=session, log=_quiet
    )
    assert result.metric == "perplexity" and result.direction == "minimize"
    assert result.best.params == OPT and len(session.evaluated) == 121 + 1  # nothing twice
    again = PerplexitySession()
    run_search(_config(adapters, tmp_path / "p", sampler="grid", budget=121), session=again, log=_quiet)
    assert again.evaluated == []


# ----------------------------------------------------------------------------- Ray


def _tiny_search(tiny_bert_dir, tmp_path, data, out, **kw):  # noqa: F811
    a = tmp_path / "a" if (tmp_path / "a").exists() else _tiny_lora(tiny_bert_dir, tmp_path / "a", 1)
    b = tmp_path / "b" if (tmp_path / "b").exists() else _tiny_lora(tiny_bert_dir, tmp_path / "b", 2)
    base = {
        "expr": "x*a + y*b",
        "modules": {"a": str(a), "b": str(b)},
        "keep": "a",
        "model": str(tiny_bert_dir),
        "tasks": ("sst2",),
        "out": str(out),
        "variables": ("x=0:1:0.5", "y=0:1:0.5"),
        "budget": 9,
        "sampler": "grid",
        "limit": 16,
        "data_dir": str(data),
        "plot": False,
    }
    return SearchConfig(**{**base, **kw})


def _records(out):
    lines = (out / "records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_ray_grid_gives_the_local_records(tiny_bert_dir, tmp_path):  # noqa: F811
    pytest.importorskip("ray")
    from pemarith.hf.search_ray import ray_engine

    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    local = run_search(_tiny_search(tiny_bert_dir, tmp_path, data, tmp_path / "local"), log=_quiet)
    remote = run_search(
        _tiny_search(tiny_bert_dir, tmp_path, data, tmp_path / "ray"), log=_quiet, engine=ray_engine(2, None)
    )
    assert local.engine == "local" and remote.engine == "ray"
    want, got = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert got[0] == want[0]  # the same fingerprint: a Ray run resumes a local one and back
    assert [(r["key"], r["split"]) for r in got[1:]] == [(r["key"], r["split"]) for r in want[1:]]
    for g, w in zip(got[1:], want[1:]):
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-6)
    assert remote.best.params == local.best.params
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["engine"] == "ray"


def test_a_killed_ray_worker_is_replaced_and_its_trial_retried(tiny_bert_dir, tmp_path):  # noqa: F811
    ray = pytest.importorskip("ray")
    import os
    import signal
    import time

    from pemarith.hf.search import prepare
    from pemarith.hf.search_ray import RayEvaluator

    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    cfg = _tiny_search(tiny_bert_dir, tmp_path, data, tmp_path / "k")
    prepare(cfg)
    ev = RayEvaluator(cfg, workers=1)
    try:
        ((want, _),) = ev.evaluate([{"x": 0.5, "y": 0.5}], "validation")
        pid = ev.pids()[0]
        ref = ev.actors[0].evaluate.remote({"x": 1.0, "y": 0.5}, "validation")
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # mid-trial (or just before it: either way it is retried)
        scores, _ = ray.get(ref, timeout=300)
        assert ev.pids()[0] != pid  # a new actor process
        (again,) = ev.evaluate([{"x": 0.5, "y": 0.5}], "validation")
        assert again[0] == pytest.approx(want)
        assert set(scores) == set(want)
    finally:
        ev.close()
