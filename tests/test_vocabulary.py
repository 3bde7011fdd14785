"""One vocabulary across subcommands (issue 17, item 7; docs/cli.md): new spellings work, old
ones still work with a note, library values print what they are."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import pemarith
from pemarith.cli import build_parser
from pemarith.kinds import KINDS


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pemarith", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_out_dtype_and_the_old_dtype(adapters, tmp_path):
    new = run("compose", "-m", f"a={adapters['a']}", "--out-dtype", "float16", "-o", "n", "a", cwd=tmp_path)
    old = run("compose", "-m", f"a={adapters['a']}", "--dtype", "float16", "-o", "o", "a", cwd=tmp_path)
    assert new.returncode == 0 and old.returncode == 0, (new.stderr, old.stderr)
    assert "--dtype is now --out-dtype" in old.stderr and "note" not in new.stderr
    for out in ("n", "o"):
        assert json.loads((tmp_path / out / "pemarith.json").read_text())["dtypes"] == ["F16"]
    assert "--dtype" not in build_parser().parse_args(["compose", "-o", "x", "a"]).__dict__.get("help", "")


def test_old_spellings_parse_to_the_new_options(capsys):
    p = build_parser()
    a = p.parse_args(["train", "--model", "m", "--task", "t", "-o", "x", "--overwrite"])
    b = p.parse_args(["train", "--model", "m", "--task", "t", "-o", "x", "--force"])
    assert a.overwrite is True and b.overwrite is True
    s = p.parse_args(["sweep", "l*a", "-m", "a=A", "--model", "m", "--task", "t", "-o", "x", "--seed", "3"])
    t = p.parse_args(
        ["sweep", "l*a", "-m", "a=A", "--model", "m", "--task", "t", "-o", "x", "--split-seed", "3"]
    )
    assert s.seed == t.seed == 3
    e = p.parse_args(["eval", "--model", "m", "--task", "t", "--json"])
    f = p.parse_args(["eval", "--model", "m", "--task", "t", "--json", "r.json"])
    g = p.parse_args(["eval", "--model", "m", "--task", "t", "-o", "r.json"])
    assert e.json is True and f.json == "r.json" and g.out == "r.json" and g.json is False
    err = capsys.readouterr().err
    assert "--overwrite is now --force" in err and "--seed is now --split-seed" in err


def test_old_spellings_do_not_change_the_defaults():
    """Neither spelling given: every option has the new spelling's default (a deprecated
    ``--seed`` once set the sweep's split seed to None, so each run split the data at random)."""
    from pemarith.cli.args import Deprecated

    p = build_parser()
    sub = p._subparsers._group_actions[0].choices
    checked = 0
    for name, parser in sub.items():
        defaults = {a.dest: a.default for a in parser._actions if not isinstance(a, Deprecated)}
        old = [a for a in parser._actions if isinstance(a, Deprecated)]
        if not old:
            continue
        required = {
            "train": ["--model", "m", "--task", "t", "-o", "x"],
            "sweep": ["l*a", "-m", "a=A", "--model", "m", "--task", "t", "-o", "x"],
            "compose": ["-o", "x", "a"],
            "eval": ["--model", "m", "--task", "t"],
        }[name]
        parsed = vars(p.parse_args([name, *required]))
        for a in old:
            assert parsed[a.dest] == defaults[a.dest], (name, a.option_strings)
            checked += 1
    assert checked >= 3
    assert p.parse_args(["sweep", *["l*a", "-m", "a=A", "--model", "m", "--task", "t", "-o", "x"]]).seed == 0


def test_help_hides_the_old_spellings():
    p = build_parser()
    sub = p._subparsers._group_actions[0].choices
    assert "--overwrite" not in sub["train"].format_help() and "--force" in sub["train"].format_help()
    assert "--out-dtype" in sub["compose"].format_help()
    assert "--dtype " not in sub["compose"].format_help().replace("--out-dtype", "")
    for name in ("train", "eval", "sweep", "reproduce", "demo"):
        assert "--verbose" in sub[name].format_help()


def test_reprs_say_what_they_are(adapters):
    a = pemarith.load(adapters["a"], "a")
    b = pemarith.load(adapters["b"], "b")
    text = repr(0.5 * a + 0.5 * b)
    assert text.startswith("PEM('0.5*a + 0.5*b', a=LORA r=4 lora_alpha=8 scaling=2 at ")
    assert str(adapters["a"]) in text and "b=LORA r=4 lora_alpha=16" in text
    assert repr(KINDS["LORA"]) == "Kind('LORA', modes=('factorwise', 'exact'))"
    d = pemarith.diagnose(0.5 * a + 0.5 * b)
    assert repr(d).startswith("Diagnosis(LORA, 3 layers, 0.5*a, 0.5*b") and "array" not in repr(d)
    t = pemarith.compose("l*a + (1-l)*b", {"a": adapters["a"], "b": adapters["b"]}, l=0.6)
    assert dict(t.terms) == {"a": 0.6, "b": 0.4} and repr(t.terms["b"]) == "0.4"
    assert np.isclose(t.terms["b"], 1 - 0.6)


def test_third_party_warnings_are_silenced_unless_verbose(monkeypatch):
    import warnings

    from pemarith.hf.quiet import silence_third_party

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_third_party(verbose=False)
        warnings.warn_explicit("renamed", UserWarning, "peft/config.py", 1, module="peft.config")
        warnings.warn_explicit("ours", UserWarning, "pemarith/x.py", 1, module="pemarith.x")
    assert [str(w.message) for w in seen] == ["ours"]
