"""--device and --dtype (issue 18, item 4), on the CPU: bfloat16 models, autocast training, the
sweep's records keyed by dtype. (GPU runs are not part of the test suite.)"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_sweep import _data_dir, _tiny_lora, tiny_bert_dir  # noqa: E402,F401
from test_train_eval import _cfg, tiny_bert  # noqa: E402,F401

import pemarith  # noqa: E402
from pemarith.errors import PemarithError  # noqa: E402
from pemarith.hf.hardware import dtype_key, resolve  # noqa: E402


def test_resolve():
    p = resolve("cpu", "auto")
    assert p.device == torch.device("cpu") and p.dtype == torch.float32
    assert resolve("cpu", "bfloat16").dtype == torch.bfloat16
    assert resolve(None, None).describe() in ("cpu float32", "cuda bfloat16", "cuda float32", "mps float32")
    with pytest.raises(PemarithError, match="use one of auto, cpu, cuda"):
        resolve("tpu")
    with pytest.raises(PemarithError, match="--dtype 'int8'"):
        resolve("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(PemarithError, match="torch sees no CUDA GPU.*use --device cpu"):
            resolve("cuda:1")
    assert dtype_key("cpu", "float32") == {} and dtype_key(None, None) == {}
    assert dtype_key("cpu", "bfloat16") == {"dtype": "bfloat16"}


def test_a_bfloat16_model_on_the_cpu_scores_like_the_float32_one(tiny_bert_dir, tmp_path):  # noqa: F811
    from pemarith.hf.evaluate import load_for_eval
    from pemarith.hf.tasks import get_task

    a = _tiny_lora(tiny_bert_dir, tmp_path / "a", 1)
    task = get_task("sst2")
    f32, tok = load_for_eval(str(tiny_bert_dir), task, a)
    bf16, _ = load_for_eval(str(tiny_bert_dir), task, a, resolve("cpu", "bfloat16"))
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    batch = tok(["a good film", "a bad film"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want, got = f32(**batch).logits, bf16(**batch).logits.float()
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_sweep_in_bfloat16_records_its_dtype(tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    data = _data_dir()
    if data is None:
        pytest.skip("SST-2 data not found (set PEMARITH_DATA_DIR)")
    from pemarith.cli import main

    a = _tiny_lora(tiny_bert_dir, tmp_path / "a", 1)
    b = _tiny_lora(tiny_bert_dir, tmp_path / "b", 2)
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
        "0:1:0.5",
        "--limit",
        "16",
        "--data-dir",
        str(data),
        "--no-refs",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "-o",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "records.jsonl").read_text().splitlines()[0])
    assert first["fingerprint"]["dtype"] == "bfloat16"
    capsys.readouterr()
    # the same sweep in float32 is another sweep: refused over these records, not mixed in
    with pytest.raises(SystemExit) as refused:
        main([*argv[:-4], "--dtype", "float32", "-o", str(tmp_path / "out")])
    assert refused.value.code == 2
    assert "dtype" in capsys.readouterr().err
    assert main(["sweep", *argv[1:-6], "--dtype", "float32", "-o", str(tmp_path / "f32")]) == 0
    f32 = json.loads((tmp_path / "f32" / "records.jsonl").read_text().splitlines()[0])
    assert "dtype" not in f32["fingerprint"]  # float32 sweeps keep the fingerprint they had


def test_training_under_bfloat16_autocast_on_the_cpu(tiny_bert, tmp_path):  # noqa: F811
    from safetensors.numpy import load_file

    from pemarith.hf.train import train

    out = train(_cfg(tiny_bert, tmp_path / "m", steps=4, device="cpu", dtype="bfloat16"))
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["dtype"] == "bfloat16" and len(record["loss"]) == 4
    assert all(x == x and abs(x) < 1e3 for x in record["loss"])
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert {str(t.dtype) for t in tensors.values()} == {"float32"}  # master weights stay float32
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    assert lora_b and any(abs(t).max() > 0 for t in lora_b)  # the update moved B off its zero init
    assert pemarith.load(out).kind.name == "LORA"


def test_cli_device_errors_are_one_line(tmp_path, capsys):
    from pemarith.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as refused:
        main(["eval", "--model", "minilm", "--task", "sst2", "--device", "cuda"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch sees no CUDA GPU" in err[0]
