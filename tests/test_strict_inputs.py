"""Bad input is one line and exit 2, never a traceback or a silently wrong file (issue 16, items
7-11): non-finite results, corrupt headers, configs, indexes and .bin files, deep or long
expressions, variables named like keywords, messages that name the file and the fix."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_adapters import TinyModel, config, tensors
from safetensors.numpy import save_file
from safetensors.torch import save_file as torch_save

import pemarith
from pemarith.errors import AdapterError, OutputError, PemarithError
from pemarith.expr import normal_form
from pemarith.io import read_safetensors_header

ST = "adapter_model.safetensors"


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pemarith.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_exit_2(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def header_file(path: Path, header: object, data: bytes = b"", raw: bytes | None = None) -> Path:
    text = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# ---- 7: non-finite results ------------------------------------------------------------------
@pytest.mark.parametrize("expr, name", [("1e308*a", "a"), ("100000*f16", "f16"), ("1e200*1e200*a", "a")])
def test_overflowing_results_are_refused(adapters, tmp_path, expr, name):
    before = snapshot(tmp_path)
    proc = cli(
        "compose", "-m", f"{name}={adapters[name]}", "--mode", "exact", "-o", "out", expr, cwd=tmp_path
    )
    one_line_exit_2(proc, "not finite" if "e200" not in expr else "overflow")
    assert snapshot(tmp_path) == before


def test_library_coefficients_must_stay_finite(adapters):
    a = pemarith.load(adapters["a"])
    big = a * 1e308
    with pytest.raises(PemarithError, match="overflow"):
        big * 10
    with pytest.raises(PemarithError, match="overflow"):
        big + big


def test_infinite_lora_alpha_is_refused(copy_adapter):
    p = copy_adapter("a")
    text = (p / "adapter_config.json").read_text().replace('"lora_alpha": 8', '"lora_alpha": Infinity')
    assert "Infinity" in text
    (p / "adapter_config.json").write_text(text)
    with pytest.raises(AdapterError, match="invalid lora_alpha: inf"):
        pemarith.load(p)


@pytest.mark.parametrize("dtype, code, scale", [("half", "F16", 1e6), ("bfloat16", "BF16", 1e45)])
def test_bake_refuses_a_merge_that_overflows(adapters, tmp_path, dtype, code, scale):
    # the merge runs on bake's worker threads: their error reaches the caller, nothing is left
    base = tmp_path / "base"
    base.mkdir()
    state = {k: getattr(v, dtype)() for k, v in TinyModel().state_dict().items()}
    torch_save(state, str(base / "model.safetensors"))
    from pemarith.bake import bake

    with pytest.raises(OutputError, match=f"not finite in {code}"):
        bake(scale * pemarith.load(adapters["a"]), base, tmp_path / "out", mode="exact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


# ---- 8, 10: headers at least as strict as the safetensors library ------------------------------
F32 = np.arange(4, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    "header, data, message",
    [
        (
            {
                "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            F32[:12],
            "overlaps",
        ),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, F32, "gap"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, F32, "after the last tensor"),
        (
            {"x": {"dtype": "F32", "shape": [2.0, 1], "data_offsets": [0, 8]}},
            F32[:8],
            "shape and data_offsets",
        ),
        ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, F32[:8], "non-negative"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, F32[:8], "non-negative"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, F32[:8], "non-negative"),
        ({"x": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, F32[:8], "dtype must be a string"),
        ({"x": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, F32[:8], "non-negative"),
        (
            {"__metadata__": {"format": 1}, "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            F32[:8],
            "__metadata__",
        ),
        (
            {"__metadata__": ["pt"], "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            F32[:8],
            "__metadata__",
        ),
        ({"x": [1, 2]}, b"", "entry for 'x'"),
    ],
)
def test_corrupt_headers_are_refused(tmp_path, header, data, message):
    path = header_file(tmp_path / "x.safetensors", header, data)
    with pytest.raises(AdapterError, match=message):
        read_safetensors_header(path)


def test_the_reader_accepts_what_the_library_writes(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file(
        {"a": np.ones((2, 3), "<f4"), "b": np.zeros((0,), "<f4"), "c": np.ones(5, "<f2")},
        str(path),
        metadata={"format": "pt"},
    )
    infos, meta = read_safetensors_header(path)
    assert set(infos) == {"a", "b", "c"} and meta == {"format": "pt"}


def test_deeply_nested_json_is_one_error(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(AdapterError, match="corrupt safetensors header"):
        read_safetensors_header(header_file(tmp_path / "x.safetensors", None, raw=b'{"x":' + deep + b"}"))


def test_a_lying_header_length_is_rejected_in_milliseconds(tmp_path):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 1 << 30))
        f.truncate(8 + (1 << 30))  # sparse: 1 GiB that fits the length
    t0 = time.perf_counter()
    with pytest.raises(AdapterError, match="the format allows 100000000"):
        read_safetensors_header(path)
    assert time.perf_counter() - t0 < 0.5


def test_an_ia3_config_over_lora_tensors_is_refused(copy_adapter, adapters):
    p = copy_adapter("a")
    ia3 = config(adapters["ia"])
    (p / "adapter_config.json").write_text(json.dumps(ia3))
    with pytest.raises(AdapterError, match="no IA3 tensors"):
        pemarith.load(p)


# ---- 9: tracebacks become one line; deep and long expressions work ------------------------------
@pytest.mark.parametrize("var", ["mode", "rank", "names", "text", "expr", "variables"])
def test_variables_named_like_keywords(adapters, tmp_path, var):
    proc = cli(
        "compose",
        "-m",
        f"a={adapters['a']}",
        "--set",
        f"{var}=0.5",
        "-o",
        "out",
        "--mode",
        "exact",
        f"{var}*a",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "pemarith.json").read_text())["terms"] == {"a": 0.5}
    assert normal_form(f"{var}*a + (1-{var})*b", variables={var: 0.25}) == {"a": 0.25, "b": 0.75}


def test_a_complex_power_is_one_error(adapters, tmp_path):
    one_line_exit_2(
        cli("compose", "-m", f"a={adapters['a']}", "-o", "out", "(-8)**0.5*a", cwd=tmp_path),
        "not a real number",
    )


def test_deep_and_long_expressions_work():
    assert normal_form("(" * 200 + "a" + ")" * 200) == {"a": 1.0}
    assert normal_form("-" * 5000 + "a") == {"a": 1.0}
    names = [f"m{i}" for i in range(5000)]
    t0 = time.perf_counter()
    got = normal_form(" + ".join(f"0.5*{n}" for n in names) + " - m0")
    assert time.perf_counter() - t0 < 5
    assert len(got) == 5000 and got["m0"] == -0.5 and got["m4999"] == 0.5
    assert normal_form("2**3**2*a") == {"a": 512.0} and normal_form("-2**2*a") == {"a": -4.0}
    assert normal_form("2**-1*a") == {"a": 0.5}


def test_an_output_that_is_a_symlink_loop(adapters, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    proc = cli("compose", "-m", f"a={adapters['a']}", "-o", "loop/out", "a", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "state",
    [
        [torch.ones(2)],
        {"a": {"b": torch.ones(2)}},
        {1: torch.ones(2)},
        {"a": torch.ones(2, 2).to_sparse()},
        {"a": torch.ones(2, dtype=torch.int8)},
    ],
)
def test_bad_bin_files_are_one_error_naming_the_file(copy_adapter, state):
    p = copy_adapter("a")
    (p / ST).unlink()
    torch.save(state, p / "adapter_model.bin")
    with pytest.raises(AdapterError, match="adapter_model.bin"):
        pemarith.load(p)


@pytest.mark.parametrize("value", [1, None, [1], "../x.safetensors"])
def test_bad_bake_index_values(tmp_path, adapters, value):
    from pemarith.bake import bake

    base = tmp_path / "base"
    base.mkdir()
    torch_save(TinyModel().state_dict(), str(base / "model-1.safetensors"))
    wm = {k: "model-1.safetensors" for k in TinyModel().state_dict()}
    wm["lin0.weight"] = value
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(AdapterError, match="index"):
        bake(pemarith.load(adapters["a"]), base, tmp_path / "out")


def test_a_key_in_the_wrong_shard_is_refused(tmp_path, adapters):
    from pemarith.bake import bake

    base = tmp_path / "base"
    base.mkdir()
    state = TinyModel().state_dict()
    keys = list(state)
    torch_save({k: state[k] for k in keys[:2]}, str(base / "s1.safetensors"))
    torch_save({k: state[k] for k in keys[2:]}, str(base / "s2.safetensors"))
    wm = {k: "s1.safetensors" for k in keys[:2]} | {k: "s2.safetensors" for k in keys[2:]}
    wm[keys[2]] = "s1.safetensors"  # wrong
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(AdapterError, match="which does not hold it"):
        bake(pemarith.load(adapters["a"]), base, tmp_path / "out")


# ---- 11: messages ----------------------------------------------------------------------------
def test_an_unbound_variable_suggests_set(adapters, tmp_path):
    one_line_exit_2(
        cli("compose", "-m", f"s0={adapters['a']}", "-o", "out", "l*s0", cwd=tmp_path), "--set l=VALUE"
    )


def test_an_unused_set_is_mentioned(adapters, tmp_path):
    proc = cli("compose", "-m", f"a={adapters['a']}", "--set", "l=0.3", "-o", "out", "a", cwd=tmp_path)
    assert proc.returncode == 0 and "--set l is not used" in proc.stderr


def test_a_huge_name_is_not_echoed_whole(adapters, tmp_path):
    name = "x" * 100_000
    proc = cli("compose", "-m", f"a={adapters['a']}", "-o", "out", f"a + {name}", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr) < 1000


def test_inspect_into_a_closed_pipe_exits_quietly(adapters, tmp_path):
    cmd = f"{sys.executable} -m pemarith.cli inspect {adapters['a']} | head -c 1 > /dev/null"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_disk_full_names_the_file(adapters, tmp_path):
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full")
    from pemarith.io import SafetensorsWriter

    with pytest.raises(OutputError, match="/dev/full"):
        w = SafetensorsWriter(full, [("x", "F32", (1 << 20,))], {})
        w.write("x", np.zeros(1 << 20, "<f4"))
        w.close()
    assert tensors(adapters["a"])  # untouched
