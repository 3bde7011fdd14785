"""Outputs never destroy what pemarith did not write (docs/SPEC.md, "Outputs"; pemarith.fs):
not the working directory, its ancestors, an input or the base of bake, nor someone else's
directory under --force; outputs are reserved, atomic after SIGKILL, and self-cleaning."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_adapters import TinyModel, make_lora, tensors
from safetensors.torch import save_file

import pemarith
from pemarith.bake import bake
from pemarith.errors import AdapterError, OutputError
from pemarith.fs import LOCK_SUFFIX, output_dir, rename_noreplace

ST = "adapter_model.safetensors"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with the sha256 of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pemarith.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refused(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr


@pytest.fixture
def work(tmp_path, adapters):
    """A working directory inside a parent, both holding a user's files, and two adapters."""
    parent = tmp_path / "parent"
    cwd = parent / "work"
    cwd.mkdir(parents=True)
    (parent / "notes.txt").write_text("the user's")
    (cwd / "data.csv").write_text("x,y\n1,2\n")
    (cwd / "base").mkdir()
    save_file(TinyModel().state_dict(), str(cwd / "base" / "model.safetensors"))
    for name in ("a", "b"):
        (cwd / name).mkdir()
        for f in adapters[name].iterdir():
            (cwd / name / f.name).write_bytes(f.read_bytes())
    return cwd


@pytest.mark.parametrize("out", ["", ".", "..", "./", "../.."])
@pytest.mark.parametrize("command", ["compose", "bake"])
def test_never_the_working_directory_or_an_ancestor(work, out, command):
    before = snapshot(work.parent.parent)
    base = ["--base", "base"] if command == "bake" else []
    proc = cli(command, *base, "-m", "a=a", "-o", out, "--force", "a", cwd=work)
    refused(proc, "output path is empty" if out == "" else "working directory")
    assert snapshot(work.parent.parent) == before


def test_never_an_input_even_an_unused_one(work):
    before = snapshot(work.parent)
    for out in ("b", "b/sub", "a", "a/x"):
        proc = cli("compose", "-m", "a=a", "-m", "b=b", "-o", out, "--force", "a", cwd=work)
        refused(proc, "would overwrite the input")
    assert snapshot(work.parent) == before


def test_force_refuses_a_directory_pemarith_did_not_write(work):
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("years of work")
    (work / "afile").write_text("x")
    before = snapshot(work.parent)
    refused(cli("compose", "-m", "a=a", "-o", "mine", "--force", "a", cwd=work), "pemarith did not write")
    refused(cli("compose", "-m", "a=a", "-o", "afile", "--force", "a", cwd=work), "not a directory")
    assert snapshot(work.parent) == before
    # an earlier output is replaced, as before
    assert cli("compose", "-m", "a=a", "-o", "out", "a", cwd=work).returncode == 0
    proc = cli("compose", "-m", "a=a", "-o", "out", "--force", "2*a", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((work / "out" / "pemarith.json").read_text())["terms"] == {"a": 2.0}
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_bake_never_over_its_base(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    save_file(TinyModel().state_dict(), str(base / "model.safetensors"))
    a = make_lora(tmp_path / "a", seed=1)
    before = snapshot(tmp_path)
    for out in (base, base / "inner", tmp_path):
        with pytest.raises(OutputError, match="would overwrite the input"):
            bake(pemarith.load(a), base, out, force=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("shard", ["/ABS", "../x.safetensors", "sub/model.safetensors", ".", ""])
def test_bake_shard_names_must_be_plain(tmp_path, shard):
    base = tmp_path / "base"
    base.mkdir()
    state = TinyModel().state_dict()
    save_file(state, str(base / "model-1.safetensors"))
    victim = tmp_path / "victim.safetensors"
    save_file(state, str(victim))
    name = str(victim) if shard == "/ABS" else shard
    weight_map = {k: "model-1.safetensors" for k in state}
    weight_map["lin0.weight"] = name
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a = make_lora(tmp_path / "a", seed=1)
    before = snapshot(tmp_path)
    with pytest.raises(AdapterError, match="not a plain file name"):
        bake(pemarith.load(a), base, tmp_path / "out")
    assert snapshot(tmp_path) == before


def test_an_output_being_written_is_reserved(work):
    """A second pemarith writing the same output is refused while the first holds it."""
    lock = work / f".out{LOCK_SUFFIX}"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        refused(cli("compose", "-m", "a=a", "-o", "out", "a", cwd=work), "being written by another")
        assert not (work / "out").exists()
    finally:
        os.close(fd)
    assert cli("compose", "-m", "a=a", "-o", "out", "a", cwd=work).returncode == 0
    assert not lock.exists()


def test_a_directory_that_appears_meanwhile_is_never_replaced(adapters, tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="already exists"):  # checked again before the rename
        with output_dir(target, [adapters["a"]]) as tmp:
            (tmp / "x").write_text("new")
            target.mkdir()  # someone else, between the check and the rename
            (target / "theirs").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # and the rename itself never replaces, not even an empty directory (rename(2) would)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "x").write_text("new")
    dst.mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert dst.is_dir() and not any(dst.iterdir()) and (src / "x").is_file()


def test_two_composes_to_one_output_one_wins(work):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pemarith.cli", "compose", "-m", "a=a", "-o", "out", f"{k + 1}*a"],
            cwd=work,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert sorted(codes) == [0, 2], [p.stderr.read() for p in procs]
    assert (work / "out" / ST).is_file()


def test_every_file_is_fsynced_before_the_rename(adapters, tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    pemarith.load(adapters["a"]).save(tmp_path / "out")
    names = {Path(p).name for p in synced}
    assert {ST, "adapter_config.json", "pemarith.json"} <= names
    assert str(tmp_path) in synced  # the parent, after the rename


def test_stale_temporaries_of_a_killed_run_are_removed(adapters, tmp_path):
    stale = tmp_path / ".out.pemarith-tmp-k1ll3d"
    stale.mkdir()
    (stale / ST).write_bytes(b"half")
    old = tmp_path / ".out.pemarith-old-zz"
    old.mkdir()
    other = tmp_path / ".other.pemarith-tmp-abc"  # another output's: not ours to judge
    other.mkdir()
    (tmp_path / ".out.pemarith-tmp-notadir").write_text("a file")  # not a directory we made
    pemarith.load(adapters["a"]).save(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.pemarith-tmp-abc",
        ".out.pemarith-tmp-notadir",
        "out",
    ]


def _kill_at_random(cmd: list[str], cwd: Path, out: Path, runs: int, check) -> None:
    t0 = time.perf_counter()
    assert subprocess.run(cmd, cwd=cwd, capture_output=True, check=False).returncode == 0
    duration = time.perf_counter() - t0
    rng = random.Random(0)
    seen_complete = 0
    for _ in range(runs):
        proc = subprocess.Popen(
            cmd + ["--force"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.0, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert out.is_dir()  # the earlier complete output, or the new complete one: never partial
        check(out)
        seen_complete += 1
    subprocess.run(cmd + ["--force"], cwd=cwd, capture_output=True, check=True)
    check(out)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == [] and seen_complete == runs


def test_sigkill_never_leaves_a_partial_output(tmp_path):
    """SIGKILL a compose and a bake at random points, 20 times each: the output under its final
    name is always complete, and the next run leaves no temporary directories behind."""
    a = make_lora(tmp_path / "a", seed=1, r=64)
    b = make_lora(tmp_path / "b", seed=2, r=64)
    base = tmp_path / "base"
    base.mkdir()
    save_file(TinyModel().state_dict(), str(base / "model.safetensors"))
    expect = {k: v.copy() for k, v in tensors(a).items()}

    def check_compose(out: Path) -> None:
        got = tensors(out)
        assert set(got) == set(expect) and json.loads((out / "adapter_config.json").read_text())["r"] > 0

    def check_bake(out: Path) -> None:
        assert (out / "model.safetensors").is_file() and (out / "pemarith.json").is_file()
        from safetensors.numpy import load_file

        assert set(load_file(str(out / "model.safetensors"))) == set(TinyModel().state_dict())

    compose = [
        sys.executable,
        "-m",
        "pemarith.cli",
        "compose",
        "-m",
        f"a={a}",
        "-m",
        f"b={b}",
        "--mode",
        "exact",
        "-o",
        "out",
        "0.5*a + 0.5*b",
    ]
    _kill_at_random(compose, tmp_path, tmp_path / "out", 20, check_compose)
    baking = [
        sys.executable,
        "-m",
        "pemarith.cli",
        "bake",
        "--base",
        str(base),
        "-m",
        f"a={a}",
        "-o",
        "baked",
        "a",
    ]
    _kill_at_random(baking, tmp_path, tmp_path / "baked", 20, check_bake)
    assert not np.isnan(tensors(tmp_path / "out")["base_model.model.lin0.lora_A.weight"]).any()


def test_sweep_directory_is_checked_too(tmp_path, monkeypatch):
    from pemarith.hf.sweep_records import RecordCache

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").write_text("the user's")
    for out in (".", str(tmp_path.parent)):
        with pytest.raises(OutputError, match="working directory"):
            RecordCache(out, {"x": 1})
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "results.csv").write_text("the user's")
    with pytest.raises(OutputError, match="pemarith did not write"):
        RecordCache("theirs", {"x": 1})
    RecordCache("sweep", {"x": 1})  # new: fine, and again: an earlier sweep
    RecordCache("sweep", {"x": 1})
    assert (tmp_path / "theirs" / "results.csv").read_text() == "the user's"
