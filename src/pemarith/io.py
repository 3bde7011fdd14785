"""PEFT adapter directories in and out, without torch.

- ``Adapter``: a lazy reference to one adapter directory. Loading reads only
  ``adapter_config.json`` and the safetensors header; each tensor is read on demand
  (one ``seek``/``read``) into numpy. ``adapter_model.bin`` is read with
  ``torch.load(weights_only=True)``, imported only in that branch. The safetensors reader and
  the streaming ``SafetensorsWriter`` live in :mod:`pemarith.tensorfile` (which says why they
  are our own) and are re-exported here.
- ``output_dir`` (from :mod:`pemarith.fs`, the one atomic writer): reserved, atomic, fsynced
  output that never replaces an input or anything pemarith did not write.
- ``inspect_adapter``: a summary of one adapter (kind, base model, targets, rank, norms).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .dtypes import HELD, STORED, bf16_bits_to_f32, finite_bytes, values
from .errors import AdapterError
from .filehash import FileHash
from .kinds import KINDS, Kind
from .tensorfile import (
    ITEMSIZES,
    SafetensorsWriter,
    TensorInfo,
    TensorReader,
    read_bytes,
    read_safetensors_header,
)

__all__ = [
    "ITEMSIZES",
    "Adapter",
    "SafetensorsWriter",
    "TensorInfo",
    "dtype_code",
    "inspect_adapter",
    "is_adapter_output",
    "read_bytes",
    "read_safetensors_header",
    "write_json",
]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
PROVENANCE_NAME = "pemarith.json"
# PEFT's save_embedding_layers ("auto" when an embedding is targeted) stores the frozen base
# weight of each adapted embedding / lm_head under this suffix: a copy of the base model, not a
# trained head, so it is carried through unchanged (and must be identical across inputs).
FROZEN_SUFFIX = ".base_layer.weight"

# safetensors dtype code -> the numpy dtype a tensor is held in (bfloat16 as float32, exactly:
# see pemarith.dtypes; ml_dtypes is never imported)
DTYPES: dict[str, np.dtype] = HELD
_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def dtype_code(dtype: Any) -> str:
    """``"F32"`` for ``np.float32``, ``"float32"``, ``"F32"``, ``"bf16"``, ... (errors otherwise)."""
    if isinstance(dtype, str):
        low = dtype.lower().replace("torch.", "")
        alias = {
            "fp32": "float32",
            "fp16": "float16",
            "half": "float16",
            "bf16": "bfloat16",
            "fp64": "float64",
            "double": "float64",
            "float": "float32",
        }
        low = alias.get(low, low)
        if low in _NAMES:
            return _NAMES[low]
        if dtype.upper() in DTYPES:
            return dtype.upper()
    else:
        with contextlib.suppress(TypeError):
            name = np.dtype(dtype).name
            if name in _NAMES:
                return _NAMES[name]
    raise AdapterError(f"unsupported dtype {dtype!r}; use one of float32, float16, bfloat16, float64")


def _check_finite(array: np.ndarray, key: str, layer: str, where: Path) -> None:
    if not np.isfinite(array).all():
        what = "NaN" if np.isnan(array).any() else "Inf"
        raise AdapterError(f"{where}: tensor {key!r} (module {layer!r}) contains {what}")


class Adapter:
    """A lazy reference to one PEFT adapter directory.

    Attributes: ``path`` (resolved directory), ``config`` (the parsed adapter_config.json),
    ``kind`` (the ``Kind`` rules for its ``peft_type``), ``weights_path``, ``shapes``
    (key -> shape), ``dtypes`` (key -> safetensors dtype code), ``layers`` (layer -> {part: key},
    in file order), ``extra`` (the ``modules_to_save`` keys: full weights, not updates) and
    ``frozen`` (copies of base weights that PEFT's ``save_embedding_layers`` adds: carried through).
    """

    def __init__(self, path: str | os.PathLike[str]):
        p = Path(path).expanduser()
        if p.is_file() and p.name in (CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME):
            p = p.parent
        if not p.exists():
            raise AdapterError(f"adapter directory not found: {p}")
        if not p.is_dir():
            raise AdapterError(f"not an adapter directory: {p}")
        self.path = p.resolve()
        cfg = self.path / CONFIG_NAME
        if not cfg.is_file():
            raise AdapterError(f"{self.path}: missing {CONFIG_NAME} (not a PEFT adapter directory?)")
        try:
            self.config: dict[str, Any] = json.loads(cfg.read_text(encoding="utf-8"))
            if not isinstance(self.config, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise AdapterError(
                f"{cfg}: corrupt {CONFIG_NAME} ({str(e)[:200] or 'nested too deeply'})"
            ) from None
        peft_type = str(self.config.get("peft_type", "")).upper()
        if peft_type not in KINDS:
            raise AdapterError(
                f"{self.path}: unsupported PEFT type {self.config.get('peft_type')!r} "
                f"(pemarith composes {', '.join(KINDS)})"
            )
        self.kind: Kind = KINDS[peft_type]
        self.kind.validate_config(self.config, self.path)

        # the compositions led by this adapter that passed PEM's input check, which depends on
        # the adapters, mode, rank and method, not on the coefficients: a sweep checks once
        self.checked: set[tuple[Any, ...]] = set()
        self._infos: dict[str, TensorInfo] | None = None
        self._bin: dict[str, np.ndarray] | None = None
        if (self.path / SAFETENSORS_NAME).is_file():
            self.weights_path = self.path / SAFETENSORS_NAME
            self._infos, _ = read_safetensors_header(self.weights_path)
            self._reader = TensorReader(self.weights_path)
            self.shapes = {k: i.shape for k, i in self._infos.items()}
            self.dtypes = {k: i.dtype for k, i in self._infos.items()}
        elif (self.path / BIN_NAME).is_file():
            self.weights_path = self.path / BIN_NAME
            self._bin = _load_bin(self.weights_path)
            self.shapes = {k: tuple(v.shape) for k, v in self._bin.items()}
            self.dtypes = {k: dtype_code(v.dtype) for k, v in self._bin.items()}
        else:
            raise AdapterError(f"{self.path}: missing {SAFETENSORS_NAME} (or {BIN_NAME})")
        if not self.shapes:
            raise AdapterError(f"{self.weights_path}: contains no tensors")

        self.layers: dict[str, dict[str, str]] = {}
        self.extra: list[str] = []
        self.frozen: list[str] = []
        for key in self.shapes:
            split = self.kind.split_key(key)
            if key.endswith(FROZEN_SUFFIX):
                self.frozen.append(key)
            elif split is None:
                self.extra.append(key)
            else:
                self.layers.setdefault(split[0], {})[split[1]] = key
        if not self.layers:
            raise AdapterError(
                f"{self.weights_path}: no {self.kind.name} tensors (the file holds "
                f"{', '.join(list(self.shapes)[:3])[:200]}), but {CONFIG_NAME} says "
                f"peft_type {self.kind.name}: is the config of another adapter?"
            )
        self.kind.validate_layout(self)
        self._hash = FileHash(self.weights_path)

    @property
    def peft_type(self) -> str:
        return self.kind.name

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def tensor(self, key: str) -> np.ndarray:
        """Read one tensor, held as :data:`pemarith.dtypes.HELD` says (bfloat16 as float32,
        exactly); NaN/Inf is an ``AdapterError`` naming it."""
        return values(self.stored(key))

    def stored(self, key: str) -> np.ndarray:
        """Read one tensor as stored (:data:`pemarith.dtypes.STORED`: bfloat16 as its uint16
        bits, read-only); NaN/Inf is an ``AdapterError`` naming it."""
        if self._bin is not None:  # converted on loading (bfloat16 to float32)
            array = self._bin[key]
            finite = bool(np.isfinite(array).all())
        else:
            assert self._infos is not None
            info = self._infos[key]
            raw = self._reader.read(info, key)
            self._hash.feed(info.start, raw)
            array = np.frombuffer(raw, dtype=STORED[info.dtype]).reshape(info.shape)
            finite = finite_bytes(raw, info.dtype)
        if not finite:
            split = self.kind.split_key(key)
            _check_finite(values(array), key, split[0] if split else key.rsplit(".", 1)[0], self.weights_path)
        return array

    def sha256(self) -> str:
        """sha256 of the weights file (cached): of the bytes already read for the composition
        (hashed on a background thread as they were read: :mod:`pemarith.filehash`), plus
        whatever of the file they did not cover."""
        return self._hash.hexdigest()

    def same_file(self, other: Adapter) -> bool:
        return self.path == other.path

    def __repr__(self) -> str:
        return f"Adapter({str(self.path)!r}, {self.peft_type})"

    def summary(self) -> str:
        """One line: kind, its main numbers, where, e.g. ``LORA r=8 lora_alpha=16 scaling=2 at runs/s0``."""
        numbers = " ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.kind.describe(self).items()
            if not isinstance(v, bool) or v
        )
        return f"{self.peft_type} {numbers} at {self.path}".replace("  ", " ")


def _load_bin(path: Path) -> dict[str, np.ndarray]:
    # Legacy pickled weights: only here is torch imported, and only with weights_only=True.
    try:
        import torch
    except ImportError:
        raise AdapterError(
            f"{path}: reading adapter_model.bin needs torch; convert it to safetensors"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt pickle
        raise AdapterError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise AdapterError(
            f"{path}: not a state dict (it holds a {type(state).__name__}); "
            "save the adapter with PEFT's save_pretrained"
        )
    out: dict[str, np.ndarray] = {}
    for key, t in state.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            what = type(t).__name__ if not isinstance(t, torch.Tensor) else f"a {t.layout} tensor"
            raise AdapterError(
                f"{path}: entry {str(key)[:100]!r} is {what}, not a named dense tensor; "
                "save the adapter with PEFT's save_pretrained"
            )
        if t.dtype == torch.bfloat16:
            out[key] = bf16_bits_to_f32(t.view(torch.int16).numpy().view(np.uint16))
        else:
            try:
                out[key] = t.numpy()
                dtype_code(out[key].dtype)  # refuse unsupported dtypes early
            except (TypeError, AdapterError):
                raise AdapterError(
                    f"{path}: tensor {key[:100]!r} has unsupported dtype {t.dtype}; "
                    "use float32, float16, bfloat16 or float64"
                ) from None
    return out


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def is_adapter_output(path: Path) -> bool:
    """Whether ``path`` holds an earlier output of ``compose`` or ``bake`` (what ``force`` may
    replace): it has pemarith's provenance file."""
    return (path / PROVENANCE_NAME).is_file()


def inspect_adapter(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise one adapter: kind, base model, targets, rank, alpha, size and per-layer norms.

    ``layer_norms`` maps each adapted layer to the Frobenius norm of its update
    (LoRA: ``||s * B A||_F``, computed from the factors; (IA)3: ``||l - 1||_F``);
    ``modules_to_save`` maps each full-weight tensor to its Frobenius norm.
    """
    a = Adapter(path)
    rules = a.kind
    # The norms first: the sha256 then hashes the bytes they read, not the file a second time.
    norms = {layer: rules.update_norm(a, layer) for layer in a.layers}
    extra = {k: float(np.linalg.norm(a.tensor(k).astype(np.float64))) for k in a.extra}
    info: dict[str, Any] = {
        "path": str(a.path),
        "kind": a.peft_type,
        "base_model": a.base_model,
        "target_modules": a.config.get("target_modules"),
        "weights_file": a.weights_path.name,
        "sha256": a.sha256(),
        "dtypes": sorted(set(a.dtypes.values())),
        "parameters": int(sum(math.prod(s) for s in a.shapes.values())),
        "layers": len(a.layers),
    }
    info.update(rules.describe(a))
    info["layer_norms"] = norms
    info["modules_to_save"] = extra
    return info
