"""Base models compared by identity (issue 18, item 5): a packaged short name and the hub id its
weights come from are one base; other differences are refused unless --base-model says they are
the same weights, and the result records that name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pemarith
from pemarith.base_names import HUB_IDS, canonical, same_base
from pemarith.errors import CompatibilityError


def _rebase(path: Path, name: str) -> Path:
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = name
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def test_canonical_names():
    assert canonical("minilm") == HUB_IDS["minilm"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert same_base("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert same_base("models/x/", "models/x") and not same_base("models/x", "models/y")
    assert canonical(None) is None and same_base(None, None) and not same_base(None, "minilm")


def test_a_short_name_and_its_hub_id_compose(copy_adapter, tmp_path):
    a = _rebase(copy_adapter("a"), "minilm")  # as pemarith recorded it before
    b = _rebase(copy_adapter("b"), HUB_IDS["minilm"])  # as it records it now
    report = pemarith.compose("0.5*a + 0.5*b", {"a": a, "b": b}).save(tmp_path / "ab")
    assert (
        json.loads((Path(report.path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "minilm"
    )


def test_different_bases_are_refused_unless_named(copy_adapter, tmp_path, capsys):
    from pemarith.cli import main

    a = _rebase(copy_adapter("a"), "/home/me/models/minilm")
    b = _rebase(copy_adapter("b"), "org/other-model")
    with pytest.raises(
        CompatibilityError, match=r"different base model.*pass base_model=NAME \(--base-model NAME\)"
    ):
        pemarith.compose("a + b", {"a": a, "b": b})
    with pytest.raises(SystemExit):
        main(["compose", "-m", f"a={a}", "-m", f"b={b}", "-o", str(tmp_path / "refused"), "a + b"])
    assert "--base-model" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert (
        main(
            [
                "compose",
                "-m",
                f"a={a}",
                "-m",
                f"b={b}",
                "--base-model",
                HUB_IDS["minilm"],
                "-o",
                str(tmp_path / "ab"),
                "a + b",
            ]
        )
        == 0
    )
    cfg = json.loads((tmp_path / "ab" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == HUB_IDS["minilm"]
    # the override survives the algebra on the composed PEM
    pem = pemarith.compose("a + b", {"a": a, "b": b}, base_model="x/y")
    assert (0.5 * pem).output_config()["base_model_name_or_path"] == "x/y"
