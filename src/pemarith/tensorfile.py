"""The safetensors format, read and written by pemarith itself: a header reader at least as strict
as the ``safetensors`` library's, one-tensor reads, and a streaming writer.

The reader is our own, not the library's: it reads one tensor at a time with a ``seek``/``read``
(the library's numpy API loads a whole file), needs no torch, and its errors name the file and
the tensor; the writer streams a file whose header is written first, so that peak memory stays
near one layer.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .dtypes import HELD, encode, finite_bytes
from .errors import AdapterError, OutputError

# Every safetensors dtype, by item size: what a base model may hold (integer buffers, booleans,
# fp8) and is copied through byte for byte when merging into it.
ITEMSIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header; ``start``/``end`` are absolute file offsets."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


MAX_HEADER = 100_000_000  # bytes: the safetensors library's own limit


def read_safetensors_header(
    path: Path, any_dtype: bool = False
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
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
            raise AdapterError(
                f"{path}: corrupt safetensors file (a header of {n} bytes; the format allows {MAX_HEADER})"
            )
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
        raise AdapterError(
            f"{path}: corrupt safetensors header ({str(e)[:200] or 'nested too deeply'})"
        ) from None
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
        shape, offsets = cast(list, shape), cast(list, offsets)  # checked just below
        if not (isinstance(code, str) and _int_list(shape) and _int_list(offsets) and len(offsets) == 2):
            raise AdapterError(
                f"{path}: corrupt safetensors header entry for {shown!r} (dtype must be a "
                "string, shape and data_offsets lists of non-negative integers)"
            )
        if code not in (ITEMSIZES if any_dtype else HELD):
            raise AdapterError(f"{path}: tensor {shown!r} has unsupported dtype {code[:20]}")
        b, end = offsets
        if b > end or base + end > size:
            raise AdapterError(
                f"{path}: truncated or corrupt safetensors file (tensor {shown!r} at bytes {b}..{end} "
                f"of a {size - base}-byte data section)"
            )
        if end - b != math.prod(shape) * ITEMSIZES[code]:
            raise AdapterError(f"{path}: corrupt safetensors header: {shown!r} size does not match its shape")
        infos[key] = TensorInfo(code, tuple(shape), base + b, base + end)
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


class TensorReader:
    """One file's tensors, read by offset: ``os.pread`` on one descriptor, opened at the first
    read and closed with the reader (a file opened per tensor costs more than reading a small
    one); :func:`read_bytes` where there is no ``pread`` or the process is out of descriptors.
    Thread-safe; a forked child shares the descriptor, which ``pread`` does not move."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def read(self, info: TensorInfo, key: str) -> bytes:
        fd = self._descriptor()
        if fd is None:
            return read_bytes(self.path, info, key)
        try:
            raw = os.pread(fd, info.end - info.start, info.start)
        except OSError as e:
            raise AdapterError(f"{self.path}: cannot read ({e})") from None
        if len(raw) != info.end - info.start:
            raise AdapterError(f"{self.path}: truncated while reading tensor {key!r}")
        return raw

    def _descriptor(self) -> int | None:
        if self._fd is None and hasattr(os, "pread"):
            with self._lock:
                if self._fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            return None
                        raise AdapterError(f"{self.path}: cannot read ({e})") from None
                    weakref.finalize(self, os.close, fd)
                    self._fd = fd
        return self._fd


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, the header first.

    ``specs`` lists every ``(key, dtype_code, shape)`` in the order they will be written.
    ``reserve`` extra bytes of header space let ``close(metadata)`` rewrite the metadata at the
    end (for values known only after the tensors, such as SVD errors).
    """

    def __init__(
        self,
        path: Path,
        specs: list[tuple[str, str, tuple[int, ...]]],
        metadata: Mapping[str, str],
        reserve: int = 0,
    ):
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
        if key != k or tuple(array.shape) != tuple(shape) or code not in HELD:
            raise RuntimeError(f"writer expected {k} {code} {shape}, got {key} {array.dtype} {array.shape}")
        raw = encode(array, code)
        if not finite_bytes(raw, code):  # an overflow: 1e308*a, 1000*a in float16, a huge merge
            raise OutputError(
                f"{key[:100]}: the result is not finite in {code} (the coefficients or the "
                "merged weights overflow it); use smaller coefficients or a wider --out-dtype"
            )
        self._put(raw)
        self._next += 1

    def write_bytes(self, key: str, raw: bytes | bytearray | memoryview) -> None:
        """Write the next tensor as it was stored elsewhere (any dtype), byte for byte."""
        k, code, shape = self._specs[self._next]
        if key != k or len(raw) != math.prod(shape) * ITEMSIZES[code]:
            raise RuntimeError(f"writer expected {k} {code} {shape}, got {key} ({len(raw)} bytes)")
        self._put(raw)
        self._next += 1

    def copy_tensor(
        self, key: str, path: Path, info: TensorInfo, chunk: int = 1 << 24, buffer: bytearray | None = None
    ) -> None:
        """Write the next tensor as ``path`` stores it at ``info``, byte for byte, a ``chunk`` at
        a time through one buffer (``buffer``, the caller's to reuse, else a new one): a large
        tensor that is only copied (an embedding) is never held whole."""
        k, code, shape = self._specs[self._next]
        n = info.end - info.start
        if key != k or n != math.prod(shape) * ITEMSIZES[code]:
            raise RuntimeError(f"writer expected {k} {code} {shape}, got {key} ({n} bytes)")
        buf = memoryview(buffer if buffer else bytearray(min(chunk, n)))[:chunk]
        try:
            with open(path, "rb") as f:
                f.seek(info.start)
                left = n
                while left:
                    got = f.readinto(buf[: min(left, len(buf))])
                    if not got:
                        raise AdapterError(f"{path}: truncated while reading tensor {key!r}")
                    self._put(buf[:got])
                    left -= got
        except OSError as e:
            raise AdapterError(f"{path}: cannot read ({e})") from None
        self._next += 1

    def _put(self, data: bytes | bytearray | memoryview) -> None:
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
