"""Where a model runs: ``--device auto|cpu|cuda|cuda:N|mps`` and ``--dtype auto|float32|bfloat16|float16``.

``auto`` picks the first accelerator torch sees (CUDA, then Apple's MPS), else the CPU; the
``auto`` dtype is bfloat16 on a GPU that supports it and float32 elsewhere. A device torch does
not see is an error that says so (never a silent fall back to the CPU). On the CPU bfloat16
works too (slower than float32 on most CPUs, but half the memory). Models are loaded in the
dtype and moved to the device once (:func:`pemarith.hf.models.load_encoder`); batches follow the
model's device where they are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PemarithError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Placement:
    """A resolved device and dtype (``torch.device``, ``torch.dtype``)."""

    device: Any
    dtype: Any

    def describe(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


def resolve(device: str | None = "auto", dtype: str | None = "auto") -> Placement:
    """The :class:`Placement` for the ``--device``/``--dtype`` values (None means ``auto``)."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            raise PemarithError(
                f"--device {device!r}: not a device; use one of {', '.join(DEVICES)}"
            ) from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise PemarithError(
                    f"--device {device}: torch sees no CUDA GPU (torch "
                    f"{torch.__version__}); use --device cpu or auto"
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise PemarithError(
                    f"--device {device}: torch sees {torch.cuda.device_count()} "
                    f"CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
                )
        elif dev.type == "mps":
            if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
                raise PemarithError(f"--device {device}: torch sees no MPS device; use --device cpu or auto")
        elif dev.type != "cpu":
            raise PemarithError(f"--device {device!r}: use one of {', '.join(DEVICES)}")
    kind = (dtype or "auto").strip().lower()
    if kind == "auto":
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        dt = torch.bfloat16 if bf16 else torch.float32
    elif kind in DTYPES:
        dt = getattr(torch, kind)
    else:
        raise PemarithError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return Placement(dev, dt)


def place(model: Any, placement: Placement | None) -> Any:
    """``model`` in ``placement``'s dtype on its device (unchanged for None)."""
    if placement is None:
        return model
    return model.to(device=placement.device, dtype=placement.dtype)


def dtype_key(device: str | None, dtype: str | None) -> dict[str, str]:
    """What a records fingerprint says of the dtype: ``{"dtype": name}`` unless scores are
    float32 ones (``{}``, so records written before ``--dtype`` existed stay valid)."""
    if device is None and dtype is None:
        return {}
    name = str(resolve(device, dtype).dtype).removeprefix("torch.")
    return {} if name == "float32" else {"dtype": name}
