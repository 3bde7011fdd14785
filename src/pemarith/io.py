"""PEFT adapter directories in and out, without torch.

- ``Adapter``: a lazy reference to one adapter directory. Loading reads only
  ``adapter_config.json`` and the safetensors header; each tensor is read on demand
  (one ``seek``/``read``) into numpy. ``adapter_model.bin`` is read with
  ``torch.load(weights_only=True)``, imported only in that branch.
  The reader is our own, not the ``safetensors`` library's: it streams one tensor at a time with
  a ``seek``/``read`` (the library's numpy API loads a whole file), needs no torch, and reports
  errors that name the file and tensor; it validates headers at least as strictly as the library
  (:func:`read_safetensors_header`).
- ``SafetensorsWriter``: streams a safetensors file whose header is written first, from the
  list of ``(key, dtype, shape)``, so peak memory stays near one layer.
- ``output_dir`` (from :mod:`pemarith.fs`, the one atomic writer): reserved, atomic, fsynced
  output that never replaces an input or anything pemarith did not write.
- ``inspect_adapter``: a summary of one adapter (kind, base model, targets, rank, norms).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dtypes import HELD, bf16_bits_to_f32, decode, encode, finite_bytes
from .errors import AdapterError, OutputError
from .kinds import KINDS, Kind

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
# Every safetensors dtype, by item size: what a base model may hold (integer buffers, booleans,
# fp8) and is copied through byte for byte when merging into it.
ITEMSIZES: dict[str, int] = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2,
                             "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
                             "I64": 8, "U64": 8, "F64": 8}


def dtype_code(dtype: Any) -> str:
    """``"F32"`` for ``np.float32``, ``"float32"``, ``"F32"``, ``"bf16"``, ... (errors otherwise)."""
    if isinstance(dtype, str):
        low = dtype.lower().replace("torch.", "")
        alias = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
                 "fp64": "float64", "double": "float64", "float": "float32"}
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


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header; ``start``/``end`` are absolute file offsets."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


MAX_HEADER = 100_000_000  # bytes: the safetensors library's own limit


def read_safetensors_header(path: Path, any_dtype: bool = False) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header (8-byte little-endian length, then JSON) and validate it at
    least as strictly as the ``safetensors`` library: a header of at most 100 MB, a JSON object
    whose ``__metadata__`` (if any) maps strings to strings, and entries of a string ``dtype``, a
    ``shape`` of non-negative integers and integer ``data_offsets`` that, sorted, tile the data
    section exactly (contiguous, no overlap, no gap, nothing after), each as long as its shape
    and dtype say.

    Only the float dtypes of :data:`DTYPES` are accepted unless ``any_dtype`` (a base model's
    checkpoint, whose other tensors are copied through)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise AdapterError(f"{path}: corrupt safetensors file (a header of {n} bytes; the format "
                               f"allows {MAX_HEADER})")
        if n > size - 8:
            raise AdapterError(
                f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise AdapterError(f"{path}: corrupt safetensors header ({str(e)[:200] or 'nested too deeply'})") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        shown = key if len(key) <= 100 else key[:100] + "..."
        if not isinstance(entry, dict):
            raise AdapterError(f"{path}: corrupt safetensors header entry for {shown!r}")
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(code, str) and _int_list(shape) and _int_list(offsets) and len(offsets) == 2):
            raise AdapterError(f"{path}: corrupt safetensors header entry for {shown!r} (dtype must be a "
                               "string, shape and data_offsets lists of non-negative integers)")
        if code not in (ITEMSIZES if any_dtype else DTYPES):
            raise AdapterError(f"{path}: tensor {shown!r} has unsupported dtype {code[:20]}")
        b, e = offsets
        if b > e or base + e > size:
            raise AdapterError(
                f"{path}: truncated or corrupt safetensors file (tensor {shown!r} at bytes {b}..{e} "
                f"of a {size - base}-byte data section)"
            )
        if e - b != math.prod(shape) * ITEMSIZES[code]:
            raise AdapterError(f"{path}: corrupt safetensors header: {shown!r} size does not match its shape")
        infos[key] = TensorInfo(code, tuple(shape), base + b, base + e)
    at = base
    for key, info in sorted(infos.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != at:
            what = "overlaps the tensor before it" if info.start < at else "leaves a gap before it"
            raise AdapterError(f"{path}: corrupt safetensors header: tensor {key[:100]!r} {what}")
        at = info.end
    if at != size:
        raise AdapterError(f"{path}: corrupt safetensors file: {size - at} bytes after the last tensor")
    return infos, metadata


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in x)


def read_bytes(path: Path, info: TensorInfo, key: str) -> bytes:
    """One tensor's stored bytes (one ``seek`` and ``read``); errors name the file and tensor."""
    try:
        with open(path, "rb") as f:
            f.seek(info.start)
            raw = f.read(info.end - info.start)
    except OSError as e:
        raise AdapterError(f"{path}: cannot read ({e})") from None
    if len(raw) != info.end - info.start:
        raise AdapterError(f"{path}: truncated while reading tensor {key!r}")
    return raw


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
            raise AdapterError(f"{cfg}: corrupt {CONFIG_NAME} ({str(e)[:200] or 'nested too deeply'})") from None
        peft_type = str(self.config.get("peft_type", "")).upper()
        if peft_type not in KINDS:
            raise AdapterError(
                f"{self.path}: unsupported PEFT type {self.config.get('peft_type')!r} "
                f"(pemarith composes {', '.join(KINDS)})"
            )
        self.kind: Kind = KINDS[peft_type]
        self.kind.validate_config(self.config, self.path)

        self._infos: dict[str, TensorInfo] | None = None
        self._bin: dict[str, np.ndarray] | None = None
        if (self.path / SAFETENSORS_NAME).is_file():
            self.weights_path = self.path / SAFETENSORS_NAME
            self._infos, _ = read_safetensors_header(self.weights_path)
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
            raise AdapterError(f"{self.weights_path}: no {self.kind.name} tensors (the file holds "
                               f"{', '.join(list(self.shapes)[:3])[:200]}), but {CONFIG_NAME} says "
                               f"peft_type {self.kind.name}: is the config of another adapter?")
        self.kind.validate_layout(self)
        self._sha256: str | None = None
        self._hasher = hashlib.sha256()
        self._hashed = 0  # bytes of the file's prefix fed to the hasher

    @property
    def peft_type(self) -> str:
        return self.kind.name

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def tensor(self, key: str) -> np.ndarray:
        """Read one tensor (in its stored dtype); NaN/Inf is an ``AdapterError`` naming it."""
        if self._bin is not None:
            array = self._bin[key]
        else:
            assert self._infos is not None
            info = self._infos[key]
            raw = read_bytes(self.weights_path, info, key)
            self._feed(info.start, raw)
            array = decode(raw, info.dtype, info.shape)
        split = self.kind.split_key(key)
        _check_finite(array, key, split[0] if split else key.rsplit(".", 1)[0], self.weights_path)
        return array

    def _feed(self, start: int, raw: bytes) -> None:
        """Hash the file as its tensors are read (one pass over the bytes, not two): bytes at
        the hashed prefix's end extend it; a read further on first hashes the gap (the header,
        tensors skipped so far); a read inside the prefix was hashed already."""
        if self._sha256 is not None or start + len(raw) <= self._hashed:
            return
        if start > self._hashed:
            self._hash_range(self._hashed, start)
        self._hasher.update(raw)
        self._hashed = start + len(raw)

    def _hash_range(self, start: int, end: int) -> None:
        with open(self.weights_path, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise AdapterError(f"{self.weights_path}: truncated while hashing")
                self._hasher.update(chunk)
                left -= len(chunk)
        self._hashed = end

    def sha256(self) -> str:
        """sha256 of the weights file (cached): of the bytes already read for the composition,
        plus whatever of the file they did not cover."""
        if self._sha256 is None:
            self._hash_range(self._hashed, self.weights_path.stat().st_size)
            self._sha256 = self._hasher.hexdigest()
        return self._sha256

    def same_file(self, other: Adapter) -> bool:
        return self.path == other.path

    def __repr__(self) -> str:
        return f"Adapter({str(self.path)!r}, {self.peft_type})"


def _load_bin(path: Path) -> dict[str, np.ndarray]:
    # Legacy pickled weights: only here is torch imported, and only with weights_only=True.
    try:
        import torch
    except ImportError:
        raise AdapterError(f"{path}: reading adapter_model.bin needs torch; convert it to safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt pickle
        raise AdapterError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise AdapterError(f"{path}: not a state dict (it holds a {type(state).__name__}); "
                           "save the adapter with PEFT's save_pretrained")
    out: dict[str, np.ndarray] = {}
    for key, t in state.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            what = type(t).__name__ if not isinstance(t, torch.Tensor) else f"a {t.layout} tensor"
            raise AdapterError(f"{path}: entry {str(key)[:100]!r} is {what}, not a named dense tensor; "
                               "save the adapter with PEFT's save_pretrained")
        if t.dtype == torch.bfloat16:
            out[key] = bf16_bits_to_f32(t.view(torch.int16).numpy().view(np.uint16))
        else:
            try:
                out[key] = t.numpy()
                dtype_code(out[key].dtype)  # refuse unsupported dtypes early
            except (TypeError, AdapterError):
                raise AdapterError(f"{path}: tensor {key[:100]!r} has unsupported dtype {t.dtype}; "
                                   "use float32, float16, bfloat16 or float64") from None
    return out


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, the header first.

    ``specs`` lists every ``(key, dtype_code, shape)`` in the order they will be written.
    ``reserve`` extra bytes of header space let ``close(metadata)`` rewrite the metadata at the
    end (for values known only after the tensors, such as SVD errors).
    """

    def __init__(self, path: Path, specs: list[tuple[str, str, tuple[int, ...]]],
                 metadata: Mapping[str, str], reserve: int = 0):
        self.path = path
        self._specs = specs
        header: dict[str, Any] = {"__metadata__": dict(metadata)}
        offset = 0
        for key, code, shape in specs:
            n = math.prod(shape) * ITEMSIZES[code]
            header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        self._header = header
        text = json.dumps(header, separators=(",", ":")).encode()
        # Pad with spaces so the data starts 8-byte aligned, as safetensors itself does.
        self._hlen = (len(text) + reserve + 7) // 8 * 8
        self._f = open(path, "wb")
        self._put(struct.pack("<Q", self._hlen) + text.ljust(self._hlen, b" "))
        self._next = 0

    def write(self, key: str, array: np.ndarray) -> None:
        k, code, shape = self._specs[self._next]
        if key != k or tuple(array.shape) != tuple(shape) or code not in DTYPES:
            raise RuntimeError(f"writer expected {k} {code} {shape}, got {key} {array.dtype} {array.shape}")
        raw = encode(array, code)
        if not finite_bytes(raw, code):  # an overflow: 1e308*a, 1000*a in float16, a huge merge
            raise OutputError(f"{key[:100]}: the result is not finite in {code} (the coefficients or the "
                              "merged weights overflow it); use smaller coefficients or a wider --dtype")
        self._put(raw)
        self._next += 1

    def write_bytes(self, key: str, raw: bytes) -> None:
        """Write the next tensor as it was stored elsewhere (any dtype), byte for byte."""
        k, code, shape = self._specs[self._next]
        if key != k or len(raw) != math.prod(shape) * ITEMSIZES[code]:
            raise RuntimeError(f"writer expected {k} {code} {shape}, got {key} ({len(raw)} bytes)")
        self._put(raw)
        self._next += 1

    def _put(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:  # ENOSPC, EIO: name the file (the output's temporary copy)
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None

    def close(self, metadata: Mapping[str, str] | None = None) -> None:
        try:
            if self._next != len(self._specs):
                raise RuntimeError(f"writer closed after {self._next} of {len(self._specs)} tensors")
            if metadata is not None:
                self._header["__metadata__"] = dict(metadata)
                text = json.dumps(self._header, separators=(",", ":")).encode()
                if len(text) > self._hlen:  # the caller's reserve was too small: a bug, not user error
                    raise RuntimeError(f"metadata needs {len(text)} header bytes, {self._hlen} reserved")
                self._f.seek(8)
                self._f.write(text.ljust(self._hlen, b" "))
        finally:
            self._f.close()

    def abort(self) -> None:
        self._f.close()


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
