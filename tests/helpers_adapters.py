"""Tiny real PEFT adapters, built with real peft on a tiny torch model, and the forward pass
computed by hand from SPEC.md's formulas. Only tests import this (torch lives here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from torch import nn

VOCAB, HIDDEN, INNER, LABELS = 30, 16, 24, 3


class TinyModel(nn.Module):
    """Embedding -> Linear -> ReLU -> Linear -> ReLU -> Linear head (same base weights per seed)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, HIDDEN)
        self.lin0 = nn.Linear(HIDDEN, INNER)
        self.lin1 = nn.Linear(INNER, INNER)
        self.head = nn.Linear(INNER, LABELS)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.lin1(torch.relu(self.lin0(self.emb(x))))))


def tokens(n: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(seed))


def _randomize(model: nn.Module, seed: int, names: tuple[str, ...]) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "ia3" in n else 0.0))


def make_lora(
    path: Path,
    seed: int,
    r: int = 4,
    alpha: float = 8,
    rslora: bool = False,
    targets: tuple[str, ...] = ("emb", "lin0", "lin1"),
    heads: tuple[str, ...] = (),
    dtype: torch.dtype | None = None,
    **extra,
) -> Path:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=list(targets),
        modules_to_save=list(heads) or None,
        init_lora_weights=False,
        **extra,
    )
    pm = get_peft_model(TinyModel(), cfg)
    _randomize(pm, seed, ("lora_", "modules_to_save"))
    if dtype is not None:
        pm = pm.to(dtype)
    pm.save_pretrained(str(path))
    return path


def make_ia3(
    path: Path,
    seed: int,
    targets: tuple[str, ...] = ("lin0", "lin1"),
    feedforward: tuple[str, ...] = ("lin1",),
    heads: tuple[str, ...] = (),
    **extra,
) -> Path:
    from peft import IA3Config, get_peft_model

    cfg = IA3Config(
        target_modules=list(targets),
        feedforward_modules=list(feedforward),
        modules_to_save=list(heads) or None,
        **extra,
    )
    pm = get_peft_model(TinyModel(), cfg)
    _randomize(pm, seed, ("ia3_l", "modules_to_save"))
    pm.save_pretrained(str(path))
    return path


def tensors(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def config(path: Path) -> dict:
    return json.loads((Path(path) / "adapter_config.json").read_text())


def scaling(cfg: dict) -> float:
    return cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])


def lora_factors(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """layer -> (B, A) as float64, e.g. ``"emb"`` -> (lora_embedding_B, lora_embedding_A)."""
    t = tensors(path)
    out = {}
    for k, v in t.items():
        for a_suffix, b_suffix in (
            (".lora_A.weight", ".lora_B.weight"),
            (".lora_embedding_A", ".lora_embedding_B"),
        ):
            if k.endswith(a_suffix):
                layer = k[: -len(a_suffix)]
                out[layer.removeprefix("base_model.model.")] = (
                    t[layer + b_suffix].astype(np.float64),
                    v.astype(np.float64),
                )
    return out


def lora_deltas(path: Path) -> dict[str, np.ndarray]:
    """layer -> dense ``s * B A`` (tests only)."""
    s = scaling(config(path))
    return {layer: s * B @ A for layer, (B, A) in lora_factors(path).items()}


def ia3_vectors(path: Path) -> dict[str, np.ndarray]:
    return {
        k.removeprefix("base_model.model.").removesuffix(".ia3_l"): v.astype(np.float64)
        for k, v in tensors(path).items()
        if k.endswith(".ia3_l")
    }


def heads(path: Path) -> dict[str, np.ndarray]:
    return {
        k.removeprefix("base_model.model."): v
        for k, v in tensors(path).items()
        if "lora_" not in k and "ia3_" not in k
    }


def by_hand(
    x: torch.Tensor,
    deltas: dict[str, np.ndarray] | None = None,
    ia3: dict[str, np.ndarray] | None = None,
    head: dict[str, np.ndarray] | None = None,
    feedforward: tuple[str, ...] = ("lin1",),
) -> torch.Tensor:
    """The tiny model's forward pass with ``W + Delta W`` (LoRA; the embedding's update is the
    transpose of ``B A``), (IA)3 vectors ``l`` (output scaling, or input scaling on feedforward
    layers), and replaced head weights, all in float64."""
    base = {k: v.double() for k, v in TinyModel().state_dict().items()}
    deltas, ia3, head = deltas or {}, ia3 or {}, head or {}
    for layer, d in deltas.items():
        w = torch.from_numpy(np.asarray(d, dtype=np.float64))
        base[f"{layer}.weight"] = base[f"{layer}.weight"] + (w.T if layer == "emb" else w)
    for k, v in head.items():
        base[k] = torch.from_numpy(np.asarray(v, dtype=np.float64))

    def linear(name: str, h: torch.Tensor) -> torch.Tensor:
        vec = torch.from_numpy(ia3[name]).flatten() if name in ia3 else None
        if vec is not None and name in feedforward:  # (IA)3 scales a feedforward layer's input
            h = h * vec
        out = h @ base[f"{name}.weight"].T + base[f"{name}.bias"]
        return out * vec if vec is not None and name not in feedforward else out

    h = base["emb.weight"][x]
    h = torch.relu(linear("lin0", h))
    h = torch.relu(linear("lin1", h))
    return linear("head", h)


def peft_forward(path: Path, x: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(TinyModel(), str(path)).eval()
    with torch.no_grad():
        return model(x).double()
