"""Reading the base checkpoint that ``bake`` merges into: its shards (``model.safetensors``, or
those ``model.safetensors.index.json`` lists, checked), one tensor's bytes, and the base key
that an adapter's module name stands for."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import AdapterError, CompatibilityError
from .io import TensorInfo, read_safetensors_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def base_shards(
    base: Path,
) -> tuple[dict[str, dict[str, TensorInfo]], dict[str, dict[str, str]], dict | None]:
    """``{shard file: {key: info}}``, each shard's metadata, and the index (None for one file)."""
    if (base / INDEX_NAME).is_file():
        try:
            index = json.loads((base / INDEX_NAME).read_text(encoding="utf-8"))
            files = list(dict.fromkeys(index["weight_map"].values()))
            if not isinstance(index["weight_map"], dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise AdapterError(f"{base / INDEX_NAME}: not a safetensors index ({str(e)[:200]})") from None
    elif (base / SINGLE_NAME).is_file():
        index, files = None, [SINGLE_NAME]
    else:
        found = sorted(p.name for p in base.iterdir() if p.suffix in (".bin", ".safetensors"))[:3]
        raise AdapterError(
            f"{base}: no {SINGLE_NAME} or {INDEX_NAME}"
            + (
                f" (found {', '.join(found)}; convert the weights to safetensors)"
                if found
                else " (not a Hugging Face checkpoint directory?)"
            )
        )
    infos, metas = {}, {}
    for name in files:
        if not plain_file_name(name):
            raise AdapterError(
                f"{base / INDEX_NAME}: the shard name {str(name)[:200]!r} is not a plain file "
                "name in the checkpoint directory; fix the index's weight_map"
            )
        if not (base / name).is_file():
            raise AdapterError(f"{base}: the index lists {name}, which is missing")
        infos[name], metas[name] = read_safetensors_header(base / name, any_dtype=True)
    if index is not None:
        for key, name in index["weight_map"].items():
            if key not in infos[name]:
                raise AdapterError(
                    f"{base / INDEX_NAME}: the index puts {key[:100]!r} in {name}, which does "
                    "not hold it; fix the index's weight_map"
                )
    return infos, metas, index


def read_into(path: Path, info: TensorInfo, key: str, into: bytearray) -> memoryview:
    """One tensor's stored bytes in the front of ``into`` (merged in place, then written)."""
    buf = memoryview(into)[: info.end - info.start]
    try:
        with open(path, "rb") as f:
            f.seek(info.start)
            n = f.readinto(buf)
    except OSError as e:
        raise AdapterError(f"{path}: cannot read ({e})") from None
    if n != len(buf):
        raise AdapterError(f"{path}: truncated while reading tensor {key!r}")
    return buf


def plain_file_name(name: object) -> bool:
    """Whether an index's shard name is a bare file name: no directory part, not absolute, not
    ``.``/``..`` (bake writes a file of each name in the output, so anything else escapes it)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and name == os.path.basename(name)
    )


def locate(name: str, keys: Mapping[str, str]) -> str | None:
    """The base key for ``name`` (a PEFT key without its prefix), e.g. ``"bert.encoder...weight"``
    for a base saved with or without the ``bert.`` prefix: exact, then the unique key that ends
    with it, then ``name`` without its leading components. Several keys ending with it is an
    error that names them."""
    if name in keys:
        return name
    ends = [k for k in keys if k.endswith("." + name)]
    if len(ends) == 1:
        return ends[0]
    if len(ends) > 1:
        raise CompatibilityError(
            f"{name!r} matches several base weights ({', '.join(sorted(ends)[:3])}); "
            "the adapter's module names do not say which one"
        )
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        if ".".join(parts[i:]) in keys:
            return ".".join(parts[i:])
    return None
