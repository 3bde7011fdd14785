"""Lambda sweeps: grids, selection rules, refine search, resume after interruption, outputs,
bad input; and one end-to-end ``pemarith sweep`` on a tiny BERT saved to disk with real SST-2 rows."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pytest

import pemarith
from pemarith.errors import PemarithError
from pemarith.hf.grid import parse_grid
from pemarith.hf.select import parse_rule, resolve_metric, search
from pemarith.hf.sweep import SweepConfig, run_sweep
from pemarith.hf.sweep_records import RecordCache

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- grid


def test_parse_grid():
    values = parse_grid("0:1:0.02")
    assert len(values) == 51 and values[0] == 0.0 and values[-1] == 1.0
    assert values[15] == 0.3  # from indices, rounded: not 0.30000000000000004
    assert parse_grid("0:1:0.1")[3] == 0.3
    assert parse_grid("1, 0.5 ,0") == (0.0, 0.5, 1.0)
    assert parse_grid("0.5:0.5:0.1") == (0.5,)
    assert parse_grid("-1:1:0.5") == (-1.0, -0.5, 0.0, 0.5, 1.0)


@pytest.mark.parametrize(
    "text",
    ["", "0:1", "0:1:0", "0:1:-0.1", "1:0:0.1", "a:b:c", "0:1:0.1:2", "0:1e9:1e-9", "nan,1", "0:inf:1"],
)
def test_bad_grid(text):
    with pytest.raises(PemarithError, match="grid"):
        parse_grid(text)


# ----------------------------------------------------------------------------- rules


POINTS = [
    (0.0, {"perplexity": 10.0, "toxicity": 0.30}),
    (0.2, {"perplexity": 10.2, "toxicity": 0.20}),
    (0.4, {"perplexity": 10.45, "toxicity": 0.12}),
    (0.6, {"perplexity": 10.9, "toxicity": 0.05}),
    (0.8, {"perplexity": 12.0, "toxicity": 0.02}),
]
COLS = ["toxicity", "perplexity"]
BASE = {"perplexity": 10.0, "toxicity": 0.31}


def test_rule_max_min():
    assert parse_rule("min").pick(POINTS, "l", COLS) == 0.8  # primary metric: toxicity
    assert parse_rule("max").pick(POINTS, "l", COLS) == 0.0
    assert parse_rule("max ppl").pick(POINTS, "l", COLS) == 0.8
    assert parse_rule("min perplexity").pick(POINTS, "l", COLS) == 0.0
    ties = [(0.5, {"acc": 0.9}), (0.1, {"acc": 0.9}), (0.3, {"acc": 0.8})]
    assert parse_rule("max").pick(ties, "l", ["acc"]) == 0.1  # ties: the smallest value


def test_rule_constraint_with_base():
    rule = parse_rule("max l where ppl <= base + 0.5")
    assert rule.needs_base
    assert rule.pick(POINTS, "l", COLS, BASE) == 0.4  # 10.45 <= 10.5 < 10.9
    assert parse_rule("max l where ppl <= base.perplexity * 1.1").pick(POINTS, "l", COLS, BASE) == 0.6
    both = parse_rule("min tox where ppl - base < 1 and toxicity >= 0.1")
    assert both.pick(POINTS, "l", COLS, BASE) == 0.4
    assert parse_rule("min l where toxicity < 0.1").pick(POINTS, "l", COLS, BASE) == 0.6
    with pytest.raises(PemarithError, match="base model was not evaluated"):
        rule.pick(POINTS, "l", COLS, None)
    with pytest.raises(PemarithError, match="no value of l satisfies"):
        parse_rule("max l where ppl <= base - 1").pick(POINTS, "l", COLS, BASE)


def test_rule_names_resolve_with_several_tasks():
    cols = ["mnli.accuracy", "rte.accuracy"]
    assert resolve_metric("rte.accuracy", cols) == "rte.accuracy"
    with pytest.raises(PemarithError, match="ambiguous"):
        resolve_metric("acc", cols)
    pts = [
        (0.0, {"mnli.accuracy": 0.8, "rte.accuracy": 0.5}),
        (0.5, {"mnli.accuracy": 0.7, "rte.accuracy": 0.6}),
        (1.0, {"mnli.accuracy": 0.4, "rte.accuracy": 0.7}),
    ]
    assert parse_rule("max rte.accuracy where mnli.accuracy >= 0.6").pick(pts, "l", cols) == 0.5


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("best", "starts with 'max' or 'min'"),
        ("max l where", "unexpected"),
        ("max l where ppl", "comparison"),
        ("max l where ppl <= base +", "unexpected"),
        ("max l ppl", "unexpected 'ppl'"),
        ("max l where ppl = 3", "unexpected character"),
        ("max l where __import__('os') <= 1", "unexpected"),
    ],
)
def test_bad_rules(text, match):
    with pytest.raises(PemarithError, match=match):
        parse_rule(text)


def test_rule_unknown_metric_and_ambiguous_base():
    with pytest.raises(PemarithError, match="unknown metric 'perplexty'.*did you mean 'perplexity'"):
        parse_rule("max l where perplexty <= 3").pick(POINTS, "l", COLS, BASE)
    with pytest.raises(PemarithError, match="exactly one metric"):
        parse_rule("max l where ppl + tox <= base").pick(POINTS, "l", COLS, BASE)


# ----------------------------------------------------------------------------- refine


def test_refine_finds_the_grid_best_with_fewer_evaluations():
    values = parse_grid("0:1:0.02")
    for peak in (0.05, 0.37, 0.637, 0.9, 1.0):
        calls: list[float] = []

        def f(v: float, calls=calls, peak=peak) -> dict[str, float]:
            calls.append(v)
            return {"accuracy": 0.9 - 2.0 * (v - peak) ** 2 + 0.01 * math.sin(7 * v)}

        rule = parse_rule("max")
        full = search(f, values, rule, "l", ["accuracy"], method="grid")
        calls.clear()
        fast = search(f, values, rule, "l", ["accuracy"], method="refine")
        assert abs(fast.pick - full.pick) <= 0.02 + 1e-9
        assert fast.pick == full.pick
        assert len(calls) == len(fast.evaluated) < len(values) / 2
        assert len(set(calls)) == len(calls)  # nothing evaluated twice


def test_refine_with_a_constraint():
    values = parse_grid("0:1:0.02")
    rule = parse_rule("max l where ppl <= base + 0.5")

    def f(v: float) -> dict[str, float]:
        return {"perplexity": 10.0 + 2.0 * v**2}  # within 0.5 of base up to l = 0.5

    full = search(f, values, rule, "l", ["perplexity"], {"perplexity": 10.0}, "grid")
    fast = search(f, values, rule, "l", ["perplexity"], {"perplexity": 10.0}, "refine")
    assert full.pick == fast.pick == 0.5
    assert len(fast.evaluated) < 20


# ----------------------------------------------------------------------------- sweep engine


class FakeSession:
    """Scores from the coefficients of the loaded composition; fails after ``fail_after`` calls."""

    text_only = False

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.terms: dict[str, float] = {}
        self.evaluated: list[dict[str, float]] = []

    def load(self, pem, mode, rank, keep):
        list(pem.iter_tensors(mode=mode, rank=rank, keep=keep))  # the composition must be valid
        self.terms = dict(pem.terms)

    def evaluate(self, split, base=False):
        if self.fail_after is not None and len(self.evaluated) >= self.fail_after:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a sweep
        self.evaluated.append({} if base else dict(self.terms))
        if base:
            return {"accuracy": 0.5, "loss": 1.0}
        c = self.terms.get("a", 0.0)
        return {"accuracy": 0.9 - (c - 0.3) ** 2, "loss": 0.1 + c}

    def primary_metrics(self, keys):
        return ["accuracy"]


def _config(adapters, out, **kw):
    base = dict(
        expr="l*a + (1-l)*b",
        modules={"a": str(adapters["a"]), "b": str(adapters["b"])},
        model="fake",
        tasks=("sst2",),
        out=str(out),
        grid="0:1:0.1",
    )
    return SweepConfig(**{**base, **kw})


def test_sweep_outputs(adapters, tmp_path):
    session = FakeSession()
    result = run_sweep(_config(adapters, tmp_path / "s"), session=session, log=lambda m: None)
    assert result.pick == 0.3 and result.evaluations == 11
    # 11 values on validation, modules a and b alone, the pick on test
    assert len(session.evaluated) == 11 + 2 + 1
    assert result.modules["a"]["accuracy"] == pytest.approx(0.9 - 0.7**2)
    rows = (tmp_path / "s" / "results.csv").read_text().splitlines()
    assert rows[0] == "l,accuracy,loss,selected" and len(rows) == 12
    assert rows[4].startswith("0.3,") and rows[4].endswith(",1")
    summary = json.loads((tmp_path / "s" / "results.json").read_text())
    assert summary["pick"]["l"] == 0.3 and summary["pick"]["normal_form"] == "0.3*a + 0.7*b"
    assert summary["pick"]["test"]["accuracy"] == pytest.approx(0.9)
    assert len(summary["validation"]) == 11
    assert (tmp_path / "s" / "sweep.png").read_bytes()[:8] == PNG_MAGIC


def test_the_plan_is_parsed_and_checked_once_not_per_value(adapters, tmp_path, monkeypatch):
    """The expression is parsed once per sweep and the inputs' compatibility checked once per set
    of modules, however many grid values are evaluated."""
    import pemarith.expr
    import pemarith.module

    parses, checks = [], []
    parser_init, check = pemarith.expr._Parser.__init__, pemarith.module.check_adapters

    def counting_parser(self, text):
        parses.append(text)
        parser_init(self, text)

    def counting_check(names, *args):
        checks.append(tuple(names))
        check(names, *args)

    monkeypatch.setattr(pemarith.expr._Parser, "__init__", counting_parser)
    monkeypatch.setattr(pemarith.module, "check_adapters", counting_check)
    counts = []
    for grid in ("0:1:0.1", "0:1:0.02"):
        parses.clear(), checks.clear()
        session = FakeSession()
        run_sweep(
            _config(adapters, tmp_path / grid, grid=grid, plot=False), session=session, log=lambda m: None
        )
        assert len(session.evaluated) > 11
        assert parses.count("l*a + (1-l)*b") == 1
        counts.append(len(checks))
    assert counts[0] == counts[1] <= 6  # {a, b}, {a} and {b}, each for compose and for writing


def test_resume_after_interruption(adapters, tmp_path):
    out = tmp_path / "resume"
    first = FakeSession(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_config(adapters, out), session=first, log=lambda m: None)
    assert len(first.evaluated) == 4
    # a torn last line (killed mid-write) is ignored
    with open(out / "records.jsonl", "a") as f:
        f.write('{"what": "value", "split": "valid')
    second = FakeSession()
    result = run_sweep(_config(adapters, out), session=second, log=lambda m: None)
    done = {round(t["a"], 6) for t in first.evaluated}
    again = [round(t["a"], 6) for t in second.evaluated[:7]]
    assert not done & set(again), "a finished value was evaluated again"
    assert len(second.evaluated) == 7 + 2 + 1  # the 7 remaining values, 2 modules, the pick on test
    assert result.reused == 4 and result.pick == 0.3
    # everything cached now: a third run evaluates nothing
    third = FakeSession()
    assert run_sweep(_config(adapters, out), session=third, log=lambda m: None).pick == 0.3
    assert third.evaluated == []


def test_resume_refuses_another_sweep(adapters, tmp_path):
    out = tmp_path / "other"
    run_sweep(_config(adapters, out, grid="0,1"), session=FakeSession(), log=lambda m: None)
    with pytest.raises(PemarithError, match="holds another sweep.*expr"):
        run_sweep(_config(adapters, out, expr="l*b + (1-l)*a"), session=FakeSession(), log=lambda m: None)
    # --restart discards the records
    s = FakeSession()
    run_sweep(
        _config(adapters, out, expr="l*b + (1-l)*a", grid="0,1", restart=True), session=s, log=lambda m: None
    )
    assert len(s.evaluated) == 2 + 2 + 1


def test_refine_sweep_counts(adapters, tmp_path):
    session = FakeSession()
    result = run_sweep(
        _config(adapters, tmp_path / "r", grid="0:1:0.02", search="refine", refs=False, test_split=None),
        session=session,
        log=lambda m: None,
    )
    assert result.pick == 0.3 and result.grid_size == 51
    assert result.evaluations == len(session.evaluated) < 20


def test_base_is_evaluated_for_a_base_rule(adapters, tmp_path):
    session = FakeSession()
    result = run_sweep(
        _config(adapters, tmp_path / "b", select="max l where loss <= base - 0.5"),
        session=session,
        log=lambda m: None,
    )
    assert result.pick == 0.4  # loss = 0.1 + l <= 0.5
    assert set(result.base) == {"validation", "test"}


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"var": "x"}, "--var 'x' does not occur"),
        ({"expr": "l*a + (1-l)*c"}, "unknown name 'c'"),
        ({"grid": "0:1:0"}, "bad grid"),
        ({"select": "maximum"}, "bad selection rule"),
        ({"select": "max l where accuracy <= bse"}, "unknown metric 'bse'"),
        ({"metrics": ("acuracy",)}, "unknown metric 'acuracy'"),
        ({"search": "binary"}, "unknown --search"),
        ({"var": "a"}, "also a module"),
        ({"tasks": ()}, "at least one --task"),
        ({"rank": 4}, "--rank needs --mode exact"),
        ({"keep": "z"}, "--keep 'z'"),
    ],
)
def test_bad_input_is_a_clear_error(adapters, tmp_path, kw, match):
    with pytest.raises(PemarithError, match=match):
        run_sweep(_config(adapters, tmp_path / "bad", **kw), session=FakeSession(), log=lambda m: None)


def test_record_cache_keys(tmp_path):
    cache = RecordCache(tmp_path / "c", {"x": 1})
    calls = []
    for v in (0.1 * 3, 0.3, 0.30000000001):
        cache.evaluate("value", "validation", v, lambda: calls.append(1) or {"m": 1.0})
    assert len(calls) == 1


# ----------------------------------------------------------------------------- end to end


def _data_dir() -> Path | None:
    env = os.environ.get("PEMARITH_DATA_DIR")
    for d in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "data"]:
        if (d / "glue" / "SST-2" / "dev.tsv").is_file():
            return d
    return None


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A tiny BERT classifier with a letter-level WordPiece tokenizer, saved like a real model."""
    transformers = pytest.importorskip("transformers")
    import torch

    root = tmp_path_factory.mktemp("tinybert")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *letters,
        *("##" + x for x in letters),
        ".",
        ",",
        "'",
        "!",
    ]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


def _tiny_lora(base_dir: Path, out: Path, seed: int) -> Path:
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir)
    pm = peft.get_peft_model(
        model,
        peft.LoraConfig(
            task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False
        ),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(out))
    return out


def test_cli_end_to_end_on_a_tiny_bert(tiny_bert_dir, tmp_path, capsys):
    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    from pemarith.cli.sweep import register as register_sweep

    a = _tiny_lora(tiny_bert_dir, tmp_path / "a", 1)
    b = _tiny_lora(tiny_bert_dir, tmp_path / "b", 2)
    parser = argparse.ArgumentParser()
    register_sweep(parser.add_subparsers(dest="command"))
    argv = [
        "sweep",
        "l*a + (1-l)*b",
        "-m",
        f"a={a}",
        "-m",
        f"b={b}",
        "--model",
        str(tiny_bert_dir),
        "--task",
        "sst2",
        "--grid",
        "0:1:0.25",
        "--limit",
        "24",
        "--data-dir",
        str(data),
        "-o",
        str(tmp_path / "out"),
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "selected  l =" in printed and "evaluated 5 of 5" in printed
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(summary["modules_alone"]) == {"a", "b"} and summary["metrics"] == ["accuracy"]
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:8] == PNG_MAGIC

    # The in-place scores are those of the composition saved and evaluated the ordinary way.
    from pemarith.hf.evaluate import evaluate

    pick = summary["pick"]["l"]
    pem = pemarith.compose("l*a + (1-l)*b", {"a": a, "b": b}, l=pick)
    ref = evaluate(str(tiny_bert_dir), "sst2", "test", pem=pem, data_dir=data, limit=24, progress=False)
    assert ref["metrics"]["accuracy"] == pytest.approx(summary["pick"]["test"]["accuracy"])

    # Rerun: everything is read back from records.jsonl, no model is loaded.
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "8 read back" in capsys.readouterr().out  # 5 values, 2 modules, 1 test


# ----------------------------------------------------------------------------- on Ray


def test_workers_option_is_checked(adapters, tmp_path):
    with pytest.raises(PemarithError, match="--workers must be at least 1"):
        _config(adapters, tmp_path / "x", workers=0)
    with pytest.raises(PemarithError, match="needs the default session"):
        run_sweep(_config(adapters, tmp_path / "x", workers=2), session=FakeSession(), log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_the_old_distributed_spelling_joins_a_ray_cluster(capsys):
    from pemarith.cli.sweep import register as register_sweep

    parser = argparse.ArgumentParser()
    register_sweep(parser.add_subparsers(dest="command"))
    common = ["sweep", "a", "-m", "a=x", "--model", "m", "--task", "sst2", "-o", "o"]
    args = parser.parse_args([*common, "--distributed", "--claim-timeout", "5"])  # the latter ignored
    assert args.ray == "auto" and "--distributed is now --ray auto" in capsys.readouterr().err
    assert parser.parse_args(common).ray is None and parser.parse_args([*common, "--ray"]).ray == ""
    assert parser.parse_args([*common, "--ray", "ray://h:10001", "--workers", "3"]).workers == 3


def _tiny_sweep(tiny_bert_dir, tmp_path, data, out, **kw):
    a = _tiny_lora(tiny_bert_dir, tmp_path / "a", 1)
    b = _tiny_lora(tiny_bert_dir, tmp_path / "b", 2)
    base = dict(
        expr="l*a + (1-l)*b",
        modules={"a": str(a), "b": str(b)},
        model=str(tiny_bert_dir),
        tasks=("sst2",),
        out=str(out),
        grid="0:1:0.125",
        search="refine",
        coarse=2,
        limit=16,
        data_dir=str(data),
        plot=False,
    )
    return SweepConfig(**{**base, **kw})


def _records(out):
    lines = (out / "records.jsonl").read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_a_ray_sweep_gives_the_local_records_and_resumes_locally(tiny_bert_dir, tmp_path):
    pytest.importorskip("ray")
    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    quiet = lambda m: None  # noqa: E731
    local = run_sweep(_tiny_sweep(tiny_bert_dir, tmp_path, data, tmp_path / "local"), log=quiet)
    remote = run_sweep(_tiny_sweep(tiny_bert_dir, tmp_path, data, tmp_path / "ray", workers=2), log=quiet)
    (head_l, want), (head_r, got) = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert head_r == head_l  # the same sweep: a Ray run resumes a local one and back
    key = lambda r: (r["what"], r["split"], r["value"])  # noqa: E731
    assert sorted(map(key, got), key=str) == sorted(map(key, want), key=str)
    assert len(got) == len({key(r) for r in got})  # nothing evaluated twice
    by_key = {key(r): r["scores"] for r in want}
    for r in got:
        assert r["scores"] == pytest.approx(by_key[key(r)], abs=1e-6)
    assert remote.pick == local.pick and remote.test == pytest.approx(local.test)
    assert [v for v, _ in remote.validation] == [v for v, _ in local.validation]
    assert remote.evaluations < remote.grid_size  # refine: the stages went to the actors in turn
    # A local rerun on the Ray sweep's records evaluates nothing
    session = FakeSession()
    again = run_sweep(
        _tiny_sweep(tiny_bert_dir, tmp_path, data, tmp_path / "ray"), session=session, log=quiet
    )
    assert session.evaluated == [] and again.pick == remote.pick


def test_a_killed_sweep_actor_is_replaced_and_its_evaluation_retried(tiny_bert_dir, tmp_path):
    ray = pytest.importorskip("ray")
    import signal

    from pemarith.hf.sweep import actor_evaluations
    from pemarith.hf.sweep_ray import RaySweep

    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    engine = RaySweep(
        _tiny_sweep(tiny_bert_dir, tmp_path, data, tmp_path / "k", workers=1), actor_evaluations
    )
    try:
        ((_, want, _),) = list(engine.run([("value", "validation", 0.25)]))
        pid = engine.pids()[0]
        ref = engine.handles[0].compute.remote("value", "validation", 0.75)
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # mid-evaluation (or just before it: either way it is retried)
        scores, _ = ray.get(ref, timeout=300)
        assert engine.pids()[0] != pid  # a new actor process
        ((_, again, _),) = list(engine.run([("value", "validation", 0.25)]))
        assert again == pytest.approx(want) and set(scores) == set(want)
    finally:
        engine.close()
