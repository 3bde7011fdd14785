"""Reading and writing adapter files: every bad input is a clear error and leaves nothing on disk."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers_adapters import TinyModel, config, lora_deltas, make_lora, tensors
from safetensors.numpy import save_file

import pemarith
from pemarith.errors import (
    AdapterError,
    CompatibilityError,
    ExprError,
    OutputError,
    PemarithError,
)
from pemarith.io import SafetensorsWriter, inspect_adapter, read_safetensors_header

ST = "adapter_model.safetensors"


def _nothing_written(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before, "output or temporary files left behind"


def _edit_config(path: Path, **changes) -> Path:
    cfg = config(path)
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


# ---- reading ---------------------------------------------------------------------------------
def test_missing_directory_config_and_weights(tmp_path, copy_adapter):
    with pytest.raises(AdapterError, match="not found"):
        pemarith.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        pemarith.load(tmp_path / "empty")
    p = copy_adapter("a")
    (p / ST).unlink()
    with pytest.raises(AdapterError, match="missing adapter_model.safetensors"):
        pemarith.load(p)


def test_corrupt_config(copy_adapter):
    p = copy_adapter("a")
    (p / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="corrupt adapter_config.json"):
        pemarith.load(p)


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b[:-10], "truncated or corrupt"),  # last tensor cut short
        (lambda b: b[:5], "truncated safetensors file"),  # not even the length
        (lambda b: b[:8] + b[8:40], "truncated or corrupt"),  # header length beyond the file
        (lambda b: struct.pack("<Q", 6) + b"{oops}" + b[8:], "corrupt safetensors header"),
        (lambda b: b[:8] + b"[" + b[9:], "corrupt safetensors header"),
    ],
)
def test_truncated_or_corrupt_weights(copy_adapter, damage, match):
    p = copy_adapter("a")
    (p / ST).write_bytes(damage((p / ST).read_bytes()))
    with pytest.raises(AdapterError, match=match):
        pemarith.load(p)


def test_offsets_beyond_file(copy_adapter):
    p = copy_adapter("a")
    raw = (p / ST).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"][1] += 10**6
    text = (
        json.dumps(header).encode().ljust(n)[:n]
        if len(json.dumps(header)) <= n
        else json.dumps(header).encode()
    )
    (p / ST).write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    with pytest.raises(AdapterError, match="truncated or corrupt"):
        pemarith.load(p)


@pytest.mark.parametrize("bad,what", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_or_inf_is_named_and_nothing_is_written(copy_adapter, tmp_path, bad, what):
    p = copy_adapter("a")
    t = tensors(p)
    key = "base_model.model.lin1.lora_B.weight"  # the last layer: the error comes mid-stream
    t[key][2, 1] = bad
    save_file(t, str(p / ST), metadata={"format": "pt"})
    pem = pemarith.load(p, "a")  # lazy: the header is fine
    before = {x.name for x in tmp_path.iterdir()}
    with pytest.raises(AdapterError, match=rf"{key}.*module 'base_model.model.lin1'.*contains {what}"):
        pem.save(tmp_path / "out", mode="exact")
    _nothing_written(tmp_path, before)
    with pytest.raises(AdapterError, match=what):
        inspect_adapter(p)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT warns about 1-d lora_B.bias when saving
@pytest.mark.parametrize(
    "extra,variant",
    [
        ({"use_dora": True}, "DoRA"),
        ({"lora_bias": True}, "LoRA bias"),
        ({"bias": "all"}, "trained biases"),
        ({"rank_pattern": {"lin0": 2}}, "rank_pattern"),
        ({"alpha_pattern": {"lin0": 2}}, "alpha_pattern"),
    ],
)
def test_unsupported_lora_variants_are_named(tmp_path, extra, variant):
    targets = ("lin0", "lin1")
    p = make_lora(tmp_path / "v", seed=1, targets=targets, **extra)
    with pytest.raises(AdapterError, match=f"unsupported LoRA variant: .*{variant}"):
        pemarith.load(p)


def test_other_peft_types_are_refused(tmp_path):
    from peft import LoHaConfig, get_peft_model

    get_peft_model(TinyModel(), LoHaConfig(target_modules=["lin0"])).save_pretrained(str(tmp_path / "loha"))
    with pytest.raises(AdapterError, match="unsupported PEFT type 'LOHA'"):
        pemarith.load(tmp_path / "loha")


def test_pickled_bin_adapter_reads_like_safetensors(tmp_path, adapters):
    from peft import PeftModel

    PeftModel.from_pretrained(TinyModel(), str(adapters["ha"])).save_pretrained(
        str(tmp_path / "bin"), safe_serialization=False
    )
    assert (tmp_path / "bin" / "adapter_model.bin").exists() and not (tmp_path / "bin" / ST).exists()
    pemarith.load(tmp_path / "bin", "x").save(tmp_path / "out")
    ref, got = tensors(adapters["ha"]), tensors(tmp_path / "out")
    assert ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)


# ---- compatibility -----------------------------------------------------------------------------
def test_mismatches_name_modules_and_difference(adapters, copy_adapter, tmp_path):
    a = pemarith.load(adapters["a"], "a")
    cases = [
        (pemarith.load(adapters["lin_only"], "t"), "factorwise", r"only 'a' adapts base_model.model.emb"),
        (pemarith.load(adapters["c8"], "c8"), "factorwise", r"equal ranks: 'a' has r=4 but 'c8' has r=8"),
        (pemarith.load(adapters["ia"], "ia"), "exact", r"different PEFT type: 'LORA' vs 'IA3'"),
        (
            pemarith.load(_edit_config(copy_adapter("b"), base_model_name_or_path="other/model"), "m"),
            "exact",
            r"different base model: None vs 'other/model'",
        ),
        (
            pemarith.load(adapters["ha"], "h"),
            "exact",
            r"only 'h' saves \(modules_to_save\) base_model.model.head",
        ),
    ]
    before = {x.name for x in tmp_path.iterdir()}
    for other, mode, match in cases:
        with pytest.raises(CompatibilityError, match=match):
            (a + other).save(tmp_path / "out", mode=mode)
        _nothing_written(tmp_path, before)


def test_layer_sets_and_shapes(adapters, copy_adapter, tmp_path):
    p = copy_adapter("b")
    t = tensors(p)
    t["base_model.model.lin1.lora_A.weight"] = np.ones((4, 20), np.float32)
    save_file(t, str(p / ST), metadata={"format": "pt"})
    with pytest.raises(
        CompatibilityError,
        match=r"module 'base_model.model.lin1': 'a' and 'x' differ in shape: "
        r"update \(d, k\) \(24, 24\) vs \(24, 20\)",
    ):
        pemarith.compose("a + x", {"a": adapters["a"], "x": p}, mode="exact")
    q = copy_adapter("b", "q")
    t = {k: v for k, v in tensors(q).items() if ".lin1." not in k}
    save_file(t, str(q / ST), metadata={"format": "pt"})
    with pytest.raises(CompatibilityError, match=r"only 'a' adapts base_model.model.lin1"):
        pemarith.compose("a - q", {"a": adapters["a"], "q": q})


def test_modules_to_save_need_affine_coefficients_or_keep(adapters, tmp_path):
    ha, hb = pemarith.load(adapters["ha"], "ha"), pemarith.load(adapters["hb"], "hb")
    for pem in (ha - hb, -ha, 0.5 * ha + 0.6 * hb):
        with pytest.raises(CompatibilityError, match=r"modules_to_save base_model.model.head .* sum to 1"):
            pem.save(tmp_path / "out")
    with pytest.raises(CompatibilityError, match=r"keep='hbb' .*did you mean 'hb'"):
        (ha - hb).save(tmp_path / "out", keep="hbb")
    assert not list(tmp_path.iterdir())
    (0.5 * ha + 0.5 * hb + 1e-9 * ha).save(tmp_path / "ok")  # within 1e-6 of 1


def test_bad_names_and_modes(adapters, tmp_path):
    with pytest.raises(ExprError, match="did you mean"):
        pemarith.compose("a + bb", {"a": adapters["a"], "b": adapters["b"]})
    with pytest.raises(PemarithError, match="unknown mode 'exakt' .*did you mean 'exact'"):
        pemarith.compose("a", {"a": adapters["a"]}, mode="exakt")
    assert not list(tmp_path.iterdir())


# ---- writing -----------------------------------------------------------------------------------
def test_existing_output_needs_force_and_is_replaced_safely(adapters, tmp_path):
    a = pemarith.load(adapters["a"], "a")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious").write_text("keep me")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        a.save(out)
    assert [x.name for x in out.iterdir()] == ["precious"]
    assert {x.name for x in tmp_path.iterdir()} == {"out"}
    # force replaces only an empty directory or an earlier output, never someone else's files
    with pytest.raises(OutputError, match="pemarith did not write"):
        a.save(out, force=True)
    assert [x.name for x in out.iterdir()] == ["precious"]
    (out / "precious").unlink()
    a.save(out, force=True)  # empty
    assert sorted(x.name for x in out.iterdir()) == ["adapter_config.json", ST, "pemarith.json"]
    (2 * a).save(out, force=True)  # an earlier output
    assert sorted(x.name for x in out.iterdir()) == ["adapter_config.json", ST, "pemarith.json"]
    assert "2*a" in (out / "pemarith.json").read_text()
    assert {x.name for x in tmp_path.iterdir()} == {"out"}


def test_failed_forced_save_keeps_the_old_output(copy_adapter, tmp_path):
    p = copy_adapter("a")
    t = tensors(p)
    t["base_model.model.lin1.lora_A.weight"][0, 0] = np.nan
    save_file(t, str(p / ST), metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious").write_text("keep me")
    (out / "pemarith.json").write_text("{}")  # an earlier output, which force may replace
    before = {x.name for x in tmp_path.iterdir()}
    with pytest.raises(AdapterError, match="NaN"):
        pemarith.load(p).save(out, force=True)
    _nothing_written(tmp_path, before)
    assert (out / "precious").read_text() == "keep me"


def test_bad_dtype(adapters, tmp_path):
    with pytest.raises(PemarithError, match="unsupported dtype 'int8'"):
        pemarith.load(adapters["a"]).save(tmp_path / "out", dtype="int8")
    assert not list(tmp_path.iterdir())


def test_never_writes_over_an_input(copy_adapter, tmp_path):
    p = copy_adapter("a")
    before = sorted(x.name for x in p.iterdir())
    pem = pemarith.load(p, "a")
    for target in (p, p / "sub", tmp_path):  # the input, inside it, a parent of it
        with pytest.raises(OutputError, match="would overwrite the input"):
            pem.save(target, force=True)
    assert sorted(x.name for x in p.iterdir()) == before


def test_missing_parents_are_created_and_removed_on_error(adapters, tmp_path):
    pemarith.load(adapters["a"]).save(tmp_path / "x" / "y" / "out")
    assert (tmp_path / "x" / "y" / "out" / ST).exists()
    with pytest.raises(CompatibilityError):
        (pemarith.load(adapters["ha"]) * 2).save(tmp_path / "p" / "q" / "out")
    assert not (tmp_path / "p").exists()


def test_streaming_writer_output_is_standard_safetensors(tmp_path):
    import ml_dtypes
    from safetensors import safe_open

    specs = [("x", "F32", (3, 2)), ("y", "BF16", (5,)), ("z", "F16", (1, 1))]
    arrays = {
        "x": np.arange(6, dtype=np.float32).reshape(3, 2),
        "y": np.linspace(0, 1, 5).astype(ml_dtypes.bfloat16),
        "z": np.ones((1, 1), np.float16),
    }
    w = SafetensorsWriter(tmp_path / "t.safetensors", specs, {"format": "pt"}, reserve=100)
    for k, _, _ in specs:
        w.write(k, arrays[k])
    w.close({"format": "pt", "late": "value"})
    raw = (tmp_path / "t.safetensors").read_bytes()
    assert (8 + struct.unpack("<Q", raw[:8])[0]) % 8 == 0
    with safe_open(tmp_path / "t.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt", "late": "value"}
        assert np.array_equal(f.get_tensor("x"), arrays["x"])
    infos, _ = read_safetensors_header(tmp_path / "t.safetensors")
    assert infos["y"].dtype == "BF16" and infos["y"].shape == (5,)


def test_inspect_adapter(adapters):
    info = inspect_adapter(adapters["a"])
    assert info["kind"] == "LORA" and info["r"] == 4 and info["lora_alpha"] == 8
    assert sorted(info["target_modules"]) == ["emb", "lin0", "lin1"]
    assert info["parameters"] == sum(v.size for v in tensors(adapters["a"]).values())
    dense = lora_deltas(adapters["a"])
    for layer, norm in info["layer_norms"].items():
        assert norm == pytest.approx(np.linalg.norm(dense[layer.removeprefix("base_model.model.")]), rel=1e-9)
    assert set(inspect_adapter(adapters["iha"])["modules_to_save"]) == {
        "base_model.model.head.weight",
        "base_model.model.head.bias",
    }


def test_core_never_imports_torch(adapters, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import pemarith
        heavy = ("torch", "transformers", "peft")
        assert not [m for m in heavy if m in sys.modules], "import"
        pem = pemarith.compose("0.5*a - b", {{"a": {str(adapters["a"])!r}, "b": {str(adapters["b"])!r}}})
        pem.save({str(tmp_path / "out")!r})
        pemarith.load({str(adapters["c8"])!r}).save({str(tmp_path / "svd")!r}, mode="exact", rank=3)
        from pemarith.io import inspect_adapter
        inspect_adapter({str(adapters["ia"])!r})
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_sigterm_removes_the_half_written_output(tmp_path):
    """A process stopped by SIGTERM (kill, a scheduler) leaves no temporary directory behind."""
    import signal

    target = tmp_path / "out"
    script = textwrap.dedent(f"""
        import time
        from pemarith.errors import unwind_on_sigterm
        from pemarith.fs import output_dir
        unwind_on_sigterm()
        with output_dir({str(target)!r}, []) as tmp:
            (tmp / "part.safetensors").write_bytes(b"half")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_dir() and tmp.parent == tmp_path
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not tmp.exists() and not target.exists() and list(tmp_path.iterdir()) == []
