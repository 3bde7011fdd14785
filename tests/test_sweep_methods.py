"""Sweeps of a merge method (``pemarith sweep --method ties ...``): every value of the grid is
the method's merge, the records know the method, a bad combination fails before any model."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from test_sweep import FakeSession, _config, _data_dir, _tiny_lora, _tiny_sweep, tiny_bert_dir  # noqa: F401

import pemarith
from pemarith.errors import PemarithError
from pemarith.hf.sweep import run_sweep
from pemarith.methods import MergeSpec

TIES = MergeSpec("ties", density=0.5)
QUIET = lambda m: None  # noqa: E731


class Recording(FakeSession):
    """:class:`FakeSession` that keeps the tensors of every composition it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[tuple[dict[str, float], dict[str, np.ndarray]]] = []

    def load(self, pem, mode, rank, keep):
        super().load(pem, mode, rank, keep)
        self.loaded.append((dict(pem.terms), dict(pem.iter_tensors(mode=mode, rank=rank, keep=keep))))


def _head(out):
    return json.loads((out / "records.jsonl").read_text().splitlines()[0])["fingerprint"]


def test_each_value_is_the_methods_merge(adapters, tmp_path):
    session = Recording()
    cfg = _config(adapters, tmp_path / "ties", grid="0:1:0.5", mode="exact", rank=8, merge=TIES)
    result = run_sweep(cfg, session=session, log=QUIET)
    mods = {"a": adapters["a"], "b": adapters["b"]}
    merged = [(t, w) for t, w in session.loaded if len(t) == 2]  # the grid and the test pick
    assert len(merged) >= 3
    for terms, tensors in merged:
        lam = terms["a"]
        want = dict(pemarith.compose("l*a + (1-l)*b", mods, "exact", 8, {"l": lam}, TIES).iter_tensors())
        linear = dict(pemarith.compose("l*a + (1-l)*b", mods, "exact", 8, {"l": lam}).iter_tensors())
        assert set(tensors) == set(want)
        for k in want:
            np.testing.assert_allclose(tensors[k], want[k], rtol=1e-6, atol=1e-7)
        if 0 < lam < 1:  # TIES prunes and elects signs: not the linear merge
            assert any(not np.allclose(tensors[k], linear[k]) for k in linear)
    summary = json.loads((tmp_path / "ties" / "results.json").read_text())
    assert summary["merge"] == {
        "method": "ties",
        "density": 0.5,
        "majority_sign": "total",
        "seed": 0,
        "space": "dense",
    }
    assert _head(tmp_path / "ties")["merge"]["method"] == "ties" and result.pick in (0.0, 0.5, 1.0)


def test_a_linear_sweep_keeps_its_fingerprint_and_another_method_is_another_sweep(adapters, tmp_path):
    run_sweep(
        _config(adapters, tmp_path / "s", grid="0:1:0.5", mode="exact", rank=8),
        session=FakeSession(),
        log=QUIET,
    )
    assert "merge" not in _head(tmp_path / "s")  # records of earlier linear sweeps stay valid
    with pytest.raises(PemarithError, match="another sweep"):
        run_sweep(
            _config(adapters, tmp_path / "s", grid="0:1:0.5", mode="exact", rank=8, merge=TIES),
            session=FakeSession(),
            log=QUIET,
        )


@pytest.mark.parametrize("kw", [{}, {"mode": "exact"}])
def test_a_lora_method_without_exact_rank_fails_before_anything_is_written(adapters, tmp_path, kw):
    session = FakeSession()
    with pytest.raises(PemarithError, match="--mode exact --rank R"):
        run_sweep(_config(adapters, tmp_path / "x", merge=TIES, **kw), session=session, log=QUIET)
    assert not (tmp_path / "x").exists() and session.evaluated == []


def test_the_cli_takes_the_merge_options(capsys):
    from pemarith.cli.sweep import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    common = ["sweep", "l*a", "-m", "a=x", "--model", "m", "--task", "sst2", "-o", "o"]
    args = parser.parse_args([*common, "--method", "dare_ties", "--density", "0.3", "--merge-seed", "7"])
    from pemarith.cli.args import merge_options

    assert MergeSpec(**merge_options(args, seed_attr="merge_seed")) == MergeSpec("dare_ties", 0.3, seed=7)
    with pytest.raises(SystemExit):
        parser.parse_args([*common, "--method", "tie"])
    assert "invalid choice: 'tie'" in capsys.readouterr().err


def test_a_ties_sweep_scores_what_the_ties_adapter_scores(tiny_bert_dir, tmp_path):  # noqa: F811
    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    from pemarith.hf.evaluate import evaluate

    cfg = _tiny_sweep(
        tiny_bert_dir,
        tmp_path,
        data,
        tmp_path / "out",
        grid="0:1:0.5",
        search="grid",
        mode="exact",
        rank=32,
        merge=TIES,
    )
    result = run_sweep(cfg, log=QUIET)
    mods = {
        "a": _tiny_lora(tiny_bert_dir, tmp_path / "a", 1),
        "b": _tiny_lora(tiny_bert_dir, tmp_path / "b", 2),
    }
    pem = pemarith.compose("l*a + (1-l)*b", mods, "exact", 32, {"l": result.pick}, TIES)
    pem.save(tmp_path / "merged")
    ref = evaluate(
        str(tiny_bert_dir),
        "sst2",
        "test",
        pem=pemarith.load(tmp_path / "merged"),
        data_dir=data,
        limit=16,
        progress=False,
    )
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert ref["metrics"]["accuracy"] == pytest.approx(summary["pick"]["test"]["accuracy"])


def test_a_reproductions_bench_sweeps_the_method_under_its_own_store_key(adapters, tmp_path):
    from pemarith.scenarios import load_recipe
    from pemarith.scenarios.runner import Context

    ctx = Context(load_recipe("distribution-generalisation", quick=True), tmp_path / "out")
    mods = {"a": adapters["a"], "b": adapters["b"]}
    linear = ctx.bench("x", "l*a + (1-l)*b", mods, ("sst2",), "exact")
    ties = ctx.bench("x", "l*a + (1-l)*b", mods, ("sst2",), "exact", rank=8, merge=TIES)
    assert "merge" not in linear._key() and "rank" not in linear._key()  # earlier keys unchanged
    assert ties._key()["merge"]["method"] == "ties" and ties._key()["rank"] == 8
    assert ties.sweep_dir != linear.sweep_dir
    cfg = ties.config()
    assert cfg.merge == TIES and cfg.rank == 8 and cfg.mode == "exact"
    assert not (tmp_path / "out").exists()  # nothing is written until work is done


# ----------------------------------------------------------------------------- search --method


def _search_config(adapters, out, **kw):
    from test_search import _config

    return _config(adapters, out, variables=("x=0:1:0.5", "y=0:1:0.5"), budget=4, sampler="grid", **kw)


def test_each_search_trial_is_the_methods_merge(adapters, tmp_path):
    pytest.importorskip("optuna")
    from pemarith.hf.search import run_search

    session = Recording()
    cfg = _search_config(adapters, tmp_path / "s", mode="exact", rank=8, merge=TIES)
    run_search(cfg, session=session, log=QUIET)
    mods = {"a": adapters["a"], "b": adapters["b"]}
    assert len(session.loaded) >= 4
    for terms, tensors in session.loaded:
        params = {"x": terms.get("a", 0.0), "y": terms.get("b", 0.0)}
        want = dict(pemarith.compose("x*a + y*b", mods, "exact", 8, params, TIES).iter_tensors())
        for k in want:
            np.testing.assert_allclose(tensors[k], want[k], rtol=1e-6, atol=1e-7)
    summary = json.loads((tmp_path / "s" / "results.json").read_text())
    assert summary["merge"]["method"] == "ties" and _head(tmp_path / "s")["merge"]["density"] == 0.5


def test_search_cli_method_without_exact_rank_is_one_line_exit_2(adapters, tmp_path, capsys):
    pytest.importorskip("optuna")
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
        "--method",
        "dare_ties",
        "--density",
        "0.5",
        "--merge-seed",
        "3",
        "-o",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--mode exact --rank R" in err
    assert not (tmp_path / "o").exists()
