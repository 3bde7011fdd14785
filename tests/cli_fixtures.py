"""Tiny real PEFT adapters for the CLI tests, made with torch + peft inside the test run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _tiny_model(d: int = 8, h: int = 12):
    import torch.nn as nn

    class TinyNet(nn.Module):
        """Two projections, named like a transformer's, so that PEFT can target them."""

        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(d, h)
            self.v_proj = nn.Linear(h, d)

        def forward(self, x):
            return self.v_proj(self.q_proj(x).relu())

    return TinyNet()


def make_lora(
    path: Path, seed: int, r: int = 4, lora_alpha: int = 8, targets: Sequence[str] = ("q_proj", "v_proj")
) -> Path:
    """Save a LoRA adapter with random, non-zero A and B to ``path``."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        _tiny_model(), LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(targets))
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero; a zero update tests nothing
                param.normal_(0.0, 0.5)
    model.save_pretrained(str(path))
    return path


def make_ia3(path: Path, seed: int) -> Path:
    """Save an (IA)3 adapter with l != 1 to ``path``."""
    import torch
    from peft import IA3Config, get_peft_model

    torch.manual_seed(seed)
    config = IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=["v_proj"])
    model = get_peft_model(_tiny_model(), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_l" in name:
                param.add_(0.3 * torch.randn_like(param))
    model.save_pretrained(str(path))
    return path
