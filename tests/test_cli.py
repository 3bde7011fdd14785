"""The ``pemarith`` console script, run in subprocesses on tiny real PEFT adapters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import make_ia3, make_lora
from safetensors.numpy import load_file, save_file

from pemarith.cli import COMMANDS, main

WEIGHTS = "adapter_model.safetensors"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pemarith.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one line on stderr that starts with ``pemarith: error:``, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pemarith: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_lora(root / "a", seed=1),
        "b": make_lora(root / "b", seed=2),
        "r2": make_lora(root / "r2", seed=3, r=2),
        "qonly": make_lora(root / "qonly", seed=4, targets=("q_proj",)),
        "toxic": make_lora(root / "toxic", seed=5),
        "ia3": make_ia3(root / "ia3", seed=6),
    }


def lora_deltas(path: Path) -> dict[str, np.ndarray]:
    """{layer: s * B @ A} from a saved LoRA directory."""
    config = json.loads((path / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(path / WEIGHTS))
    return {
        key.removesuffix(".lora_A.weight"): scale
        * tensors[key.replace("lora_A", "lora_B")].astype(np.float64)
        @ tensors[key].astype(np.float64)
        for key in tensors
        if key.endswith("lora_A.weight")
    }


# ----------------------------------------------------------------------------- compose


@pytest.mark.parametrize("first", [True, False])
def test_expression_first_or_last(adapters, tmp_path, first):
    opts = ["-m", f"a={adapters['a']}", "-m", f"b={adapters['b']}", "-o", str(tmp_path / "out")]
    args = ["0.3*a + 0.7*b", *opts] if first else [*opts, "0.3*a + 0.7*b"]
    proc = run("compose", *args)
    assert proc.returncode == 0, proc.stderr
    assert "0.3*a + 0.7*b" in proc.stdout
    assert "factorwise" in proc.stdout
    assert str(tmp_path / "out") in proc.stdout
    assert (tmp_path / "out" / WEIGHTS).is_file()
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_unquoted_expression_tokens_are_joined(adapters, tmp_path):
    proc = run(
        "compose",
        "-m",
        f"a={adapters['a']}",
        "-m",
        f"b={adapters['b']}",
        "-o",
        str(tmp_path / "out"),
        "0.5*a",
        "+",
        "0.5*b",
    )
    assert proc.returncode == 0, proc.stderr
    assert "0.5*a + 0.5*b" in proc.stdout


def test_double_dash_allows_leading_minus(adapters, tmp_path):
    out = tmp_path / "detox"
    proc = run("compose", "-m", f"toxic={adapters['toxic']}", "-o", str(out), "--", "-toxic")
    assert proc.returncode == 0, proc.stderr
    assert "-toxic" in proc.stdout
    src, neg = load_file(str(adapters["toxic"] / WEIGHTS)), load_file(str(out / WEIGHTS))
    for key, value in src.items():  # factorwise negation: {A, -B} (SPEC, paper eq. 6)
        expected = -value if "lora_B" in key else value
        np.testing.assert_allclose(neg[key], expected, rtol=1e-6, atol=1e-7)


def test_leading_minus_without_double_dash_explains(adapters, tmp_path):
    proc = run("compose", "-m", f"toxic={adapters['toxic']}", "-o", str(tmp_path / "o"), "-toxic")
    assert_user_error(proc, "'--'")
    assert not (tmp_path / "o").exists()


def test_set_binds_free_variables(adapters, tmp_path):
    proc = run(
        "compose",
        "-m",
        f"a={adapters['a']}",
        "-m",
        f"b={adapters['b']}",
        "-o",
        str(tmp_path / "out"),
        "--set",
        "l=0.25",
        "--json",
        "l*a + (1-l)*b",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["terms"] == {"a": 0.25, "b": 0.75}
    assert report["mode"] == "factorwise"
    assert Path(report["path"]) == tmp_path / "out"


def test_exact_is_the_sum_of_weight_updates(adapters, tmp_path):
    out = tmp_path / "exact"
    proc = run(
        "compose",
        "-m",
        f"a={adapters['a']}",
        "-m",
        f"r2={adapters['r2']}",
        "-o",
        str(out),
        "--mode",
        "exact",
        "a - 0.5*r2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "exact" in proc.stdout
    got, da, db = lora_deltas(out), lora_deltas(adapters["a"]), lora_deltas(adapters["r2"])
    assert set(got) == set(da)
    for layer in got:
        np.testing.assert_allclose(got[layer], da[layer] - 0.5 * db[layer], atol=1e-5)


def test_exact_rank_reports_svd_error(adapters, tmp_path):
    out = tmp_path / "svd"
    proc = run(
        "compose",
        "-m",
        f"a={adapters['a']}",
        "-m",
        f"b={adapters['b']}",
        "-o",
        str(out),
        "--mode",
        "exact",
        "--rank",
        "3",
        "--json",
        "a + b",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["rank"] == 3
    assert report["layer_errors"] and 0 < report["max_layer_error"] < 1
    assert report["mean_layer_error"] <= report["max_layer_error"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3

    text = run(
        "compose",
        "-m",
        f"a={adapters['a']}",
        "-m",
        f"b={adapters['b']}",
        "-o",
        str(tmp_path / "svd2"),
        "--mode",
        "exact",
        "--rank",
        "3",
        "a + b",
    )
    assert text.returncode == 0, text.stderr
    assert "max" in text.stdout and "mean" in text.stdout


def test_force_replaces_an_earlier_output_only(adapters, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    proc = run("compose", "-m", f"a={adapters['a']}", "-o", str(out), "--force", "a")
    assert proc.returncode == 2 and "pemarith did not write" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    (out / "pemarith.json").write_text("{}")  # now it is an earlier output
    proc = run("compose", "-m", f"a={adapters['a']}", "-o", str(out), "--force", "a")
    assert proc.returncode == 0, proc.stderr
    assert (out / WEIGHTS).is_file() and not (out / "old.txt").exists()


def test_console_script(adapters, tmp_path):
    script = shutil.which("pemarith", path=os.path.dirname(sys.executable)) or shutil.which("pemarith")
    if script is None:
        pytest.skip("the pemarith console script is not installed (pip install -e .)")
    proc = subprocess.run(
        [script, "compose", "-m", f"a={adapters['a']}", "-o", str(tmp_path / "o"), "2*a"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    version = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("pemarith ")


# ----------------------------------------------------------------------------- errors


def _compose_error(tmp_path: Path, *args: str, cwd: Path | None = None) -> str:
    out = tmp_path / "never"
    proc = run("compose", "-o", str(out), *args, cwd=cwd)
    line = assert_user_error(proc)
    assert not out.exists(), "an error must write nothing"
    return line


def test_unknown_name_did_you_mean(adapters, tmp_path):
    line = _compose_error(tmp_path, "-m", f"toxic={adapters['toxic']}", "--", "-toxc")
    assert "toxc" in line and "did you mean 'toxic'" in line


def test_unknown_name_with_directory_suggests_m(adapters, tmp_path):
    shutil.copytree(adapters["a"], tmp_path / "mine")
    line = _compose_error(tmp_path, "-m", f"a={adapters['a']}", "a + mine", cwd=tmp_path)
    assert "-m mine=" in line


def test_unknown_variable_did_you_mean(adapters, tmp_path):
    line = _compose_error(
        tmp_path,
        "-m",
        f"a={adapters['a']}",
        "-m",
        f"b={adapters['b']}",
        "--set",
        "lam=0.3",
        "lamb*a + (1-lam)*b",
    )
    assert "did you mean 'lam'" in line


@pytest.mark.parametrize("expr", ["a +* b", "a * b", "(a + b", "2**a"])
def test_malformed_expression_has_position(adapters, tmp_path, expr):
    line = _compose_error(tmp_path, "-m", f"a={adapters['a']}", "-m", f"b={adapters['b']}", expr)
    assert "position" in line


def test_missing_directory(tmp_path):
    line = _compose_error(tmp_path, "-m", f"a={tmp_path / 'nope'}", "a")
    assert "nope" in line


def test_existing_output_without_force(adapters, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run("compose", "-m", f"a={adapters['a']}", "-o", str(out), "a")
    assert_user_error(proc, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


def test_output_over_an_input_is_refused(adapters, tmp_path):
    src = shutil.copytree(adapters["a"], tmp_path / "in")
    before = (src / WEIGHTS).read_bytes()
    proc = run("compose", "-m", f"a={src}", "-o", str(src), "--force", "0.5*a")
    assert_user_error(proc)
    assert (src / WEIGHTS).read_bytes() == before


def test_mismatched_targets(adapters, tmp_path):
    line = _compose_error(
        tmp_path, "-m", f"a={adapters['a']}", "-m", f"q={adapters['qonly']}", "--mode", "exact", "a + q"
    )
    assert "v_proj" in line or "target" in line


def test_mismatched_rank_factorwise(adapters, tmp_path):
    line = _compose_error(tmp_path, "-m", f"a={adapters['a']}", "-m", f"r2={adapters['r2']}", "a + r2")
    assert "'a'" in line and "'r2'" in line


def test_mismatched_kinds(adapters, tmp_path):
    _compose_error(tmp_path, "-m", f"a={adapters['a']}", "-m", f"i={adapters['ia3']}", "a + i")


def test_nan_input(adapters, tmp_path):
    bad = shutil.copytree(adapters["a"], tmp_path / "bad")
    tensors = load_file(str(bad / WEIGHTS))
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = np.nan
    save_file(tensors, str(bad / WEIGHTS))
    line = _compose_error(tmp_path, "-m", f"a={bad}", "a")
    assert "nan" in line.lower()


def test_truncated_weights(adapters, tmp_path):
    bad = shutil.copytree(adapters["a"], tmp_path / "trunc")
    data = (bad / WEIGHTS).read_bytes()
    (bad / WEIGHTS).write_bytes(data[: len(data) // 2])
    _compose_error(tmp_path, "-m", f"a={bad}", "a")


@pytest.mark.parametrize(
    "extra",
    [
        ["--rank", "2"],  # --rank needs --mode exact
        ["--rank", "0", "--mode", "exact"],
        ["--set", "l=abc"],
        ["--set", "noequals"],
        ["--mode", "svd"],
        ["--dtype", "int8"],
    ],
)
def test_bad_options(adapters, tmp_path, extra):
    _compose_error(tmp_path, "-m", f"a={adapters['a']}", *extra, "a")


def test_missing_output_option(adapters):
    assert_user_error(run("compose", "-m", f"a={adapters['a']}", "a"), "-o")


def test_unknown_command():
    assert_user_error(run("frobnicate"))


# ----------------------------------------------------------------------------- inspect


def test_inspect_text(adapters):
    proc = run("inspect", str(adapters["a"]))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.lower()
    assert "lora" in out and "q_proj" in out and "v_proj" in out
    assert "4" in out and "8" in out  # r and lora_alpha


def test_inspect_json(adapters):
    proc = run("inspect", str(adapters["a"]), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert "lora" in json.dumps(info).lower()
    assert "q_proj" in json.dumps(info)


def test_inspect_ia3(adapters):
    proc = run("inspect", str(adapters["ia3"]))
    assert proc.returncode == 0, proc.stderr
    assert "ia3" in proc.stdout.lower()


def test_inspect_missing(tmp_path):
    assert_user_error(run("inspect", str(tmp_path / "nope")), "nope")


# ----------------------------------------------------------------------------- help, imports


def test_help_and_version():
    top = run("--help")
    assert top.returncode == 0 and "compose" in top.stdout and "examples:" in top.stdout
    sub = run("compose", "--help")
    assert sub.returncode == 0 and "factorwise" in sub.stdout and "--" in sub.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("pemarith ")


HEAVY = ("torch", "transformers", "peft")


def _imports_after(argv: list[str], watch: tuple[str, ...] = HEAVY) -> list[str]:
    """Run ``main(argv)`` in a fresh interpreter; return the modules of ``watch`` it imported."""
    code = textwrap.dedent(f"""
        import sys
        from pemarith.cli import main
        try:
            status = main({argv!r})
        except SystemExit as exc:
            status = exc.code
        assert status in (0, None), status
        print("HEAVY:" + ",".join(m for m in {watch!r} if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("HEAVY:"))
    return [m for m in line.removeprefix("HEAVY:").split(",") if m]


def test_compose_help_imports_no_torch():
    assert _imports_after(["compose", "--help"]) == []


def test_compose_and_inspect_import_no_torch(adapters, tmp_path):
    out = str(tmp_path / "o")
    assert (
        _imports_after(
            [
                "compose",
                "-m",
                f"a={adapters['a']}",
                "-m",
                f"b={adapters['b']}",
                "-o",
                out,
                "--mode",
                "exact",
                "--rank",
                "2",
                "a - b",
            ]
        )
        == []
    )
    assert _imports_after(["inspect", str(adapters["a"])]) == []


def test_a_named_command_registers_only_itself(adapters, capsys):
    # start-up: `pemarith inspect` imports no other subcommand's module (issue 21) ...
    others = tuple(f"pemarith.cli.{m}" for m in COMMANDS.values() if m not in ("inspect", "show"))
    assert _imports_after(["inspect", str(adapters["a"])], others + ("pemarith.cli.inspect",)) == [
        "pemarith.cli.inspect"
    ]
    # ... while the help and an unknown command still list every subcommand
    with pytest.raises(SystemExit):
        main(["nope"])
    err = capsys.readouterr().err
    assert all(f"'{name}'" in err for name in COMMANDS), err


def test_top_level_help_imports_no_torch():
    # the hf subcommands are registered here; their module must not import torch at import
    assert "torch" not in _imports_after(["--help"])


# ----------------------------------------------------------------------------- hf registration


class _Refuse:
    """A meta-path finder that makes ``import NAME`` fail like a package that is not installed."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == self.name:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@pytest.mark.parametrize("missing", ["torch", "transformers", "peft"])
def test_a_missing_hf_extra_is_one_line_with_the_fix(monkeypatch, capsys, tmp_path, missing):
    """Every subcommand is listed; one that needs the hf extra says how to install it."""
    from pemarith import cli

    for name in list(sys.modules):
        if name.split(".")[0] == missing or name.startswith(
            ("pemarith.hf.train", "pemarith.hf.models", "pemarith.hf.demo", "pemarith.hf.evaluate")
        ):
            monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Refuse(missing), *sys.meta_path])
    parser = cli.build_parser([])
    choices = parser._subparsers._group_actions[0].choices  # the registered subcommands
    assert set(cli.COMMANDS) <= set(choices)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--model", "minilm", "--task", "sst2", "-o", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'pemarith[hf]'" in err[0] and missing in err[0], err
    assert not (tmp_path / "out").exists()


def test_lone_scale_factorwise_note(adapters, tmp_path):
    proc = run("compose", "-m", f"a={adapters['a']}", "-o", str(tmp_path / "f"), "--", "-0.5*a")
    assert proc.returncode == 0, proc.stderr
    assert "c*|c| = -0.25" in proc.stderr and "--mode exact" in proc.stderr
    exact = run(
        "compose", "-m", f"a={adapters['a']}", "-o", str(tmp_path / "e"), "--mode", "exact", "--", "-0.5*a"
    )
    assert exact.returncode == 0 and exact.stderr == ""
