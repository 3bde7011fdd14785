"""Every example in README.md runs, as written, on tiny real PEFT adapters named as the README names
them (the hf examples need the real models and are marked slow)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ["s0", "s1", "mnli", "rte", "toxic", "cls_amazon", "lm_yelp", "lm_amazon", "t1", "t_toxic"]


def blocks(lang: str, section: str) -> list[str]:
    """Code blocks of ``lang`` under the ``## section`` heading of README.md."""
    text = README.read_text()
    part = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", part, flags=re.S)


def commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        line.split("  #")[0].strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from helpers_adapters import make_lora

    for seed, name in enumerate(NAMES):
        # the demo's modules (s0, s1) are classifiers with a head, as the demo trains them
        heads = ("head",) if name in ("s0", "s1") else ()
        make_lora(tmp_path / name, seed=seed, targets=("lin0", "lin1"), heads=heads)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_pemarith(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(cmd)
    assert argv[0] == "pemarith", cmd
    return subprocess.run(
        [sys.executable, "-m", "pemarith", *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ},
    )


def test_library_example_runs(workdir: Path):
    (code,) = blocks("python", "Library")
    exec(compile(code, "README.md", "exec"), {})
    for out in ("merged", "diff_r8", "cls_yelp"):
        assert (workdir / out / "adapter_model.safetensors").is_file()
        assert (workdir / out / "pemarith.json").is_file()


def test_merge_method_examples_run(workdir: Path):
    (block,) = blocks("bash", "Merge methods")
    for cmd in commands(block):
        proc = run_pemarith(cmd, workdir)
        assert proc.returncode == 0, (cmd, proc.stderr)
    for out in ("merged_ties", "merged_dare"):
        assert (workdir / out / "pemarith.json").is_file()


def test_cli_examples_run(workdir: Path):
    (block,) = blocks("bash", "Command line")
    cmds = commands(block)
    assert len(cmds) >= 6
    for cmd in cmds:
        done = run_pemarith(cmd, workdir)
        assert done.returncode == 0, f"{cmd}\n{done.stderr}"
    for out in ("merged_dg", "merged_mt", "detox", "cls_yelp", "t1_detox"):
        assert (workdir / out / "adapter_config.json").is_file()


def test_bake_example_runs(workdir: Path):
    import torch
    from helpers_adapters import TinyModel, peft_forward, tokens
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    (workdir / "base_model").mkdir()
    save_file(TinyModel().state_dict(), str(workdir / "base_model" / "model.safetensors"))
    (block,) = blocks("bash", "Deployment")
    for cmd in commands(block):
        done = run_pemarith(cmd, workdir)
        assert done.returncode == 0, f"{cmd}\n{done.stderr}"
    model = TinyModel()
    model.load_state_dict(
        {
            k: torch.from_numpy(v.copy())
            for k, v in load_file(str(workdir / "merged_model" / "model.safetensors")).items()
        }
    )
    import pemarith

    pemarith.compose("0.5*s0 + 0.5*s1", {"s0": "s0", "s1": "s1"}).save("composed")
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(tokens()).double(),
            peft_forward(workdir / "composed", tokens()),
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.slow
def test_hf_examples_run(tmp_path: Path):
    (block,) = blocks("bash", "Making and judging modules")
    for cmd in commands(block):
        if cmd.startswith("pemarith sweep"):
            continue  # needs runs/s0 and runs/s1 (the demo makes them); covered by tests/test_sweep.py
        done = run_pemarith(cmd, tmp_path)
        assert done.returncode == 0, f"{cmd}\n{done.stderr}"
