"""Shared fixtures: tiny real PEFT adapters, built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> adapter directory; every LoRA targets emb, lin0, lin1 unless its name says."""
    import torch
    from helpers_adapters import make_ia3, make_lora

    root = tmp_path_factory.mktemp("adapters")
    made = {
        "a": make_lora(root / "a", seed=1, r=4, alpha=8),
        "b": make_lora(root / "b", seed=2, r=4, alpha=16),
        "c8": make_lora(root / "c8", seed=3, r=8, alpha=8, rslora=True),
        "d2": make_lora(root / "d2", seed=4, r=2, alpha=3),
        "ha": make_lora(root / "ha", seed=5, heads=("head",)),
        "hb": make_lora(root / "hb", seed=6, heads=("head",)),
        "onlyhead": make_lora(root / "onlyhead", seed=7, targets=("head",)),
        "lin_only": make_lora(root / "lin_only", seed=8, targets=("lin0", "lin1")),
        "bf_a": make_lora(root / "bf_a", seed=9, dtype=torch.bfloat16),
        "bf_b": make_lora(root / "bf_b", seed=10, dtype=torch.bfloat16),
        "f16": make_lora(root / "f16", seed=11, dtype=torch.float16),
        "ia": make_ia3(root / "ia", seed=12),
        "ib": make_ia3(root / "ib", seed=13),
        "iha": make_ia3(root / "iha", seed=14, heads=("head",)),
        "ihb": make_ia3(root / "ihb", seed=15, heads=("head",)),
    }
    return made


@pytest.fixture
def copy_adapter(adapters: dict[str, Path], tmp_path: Path):
    """copy_adapter("a") -> a private copy of adapter "a" that a test may corrupt."""

    def copy(name: str, dest: str | None = None) -> Path:
        out = tmp_path / (dest or f"copy_{name}")
        shutil.copytree(adapters[name], out)
        return out

    return copy
