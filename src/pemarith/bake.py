"""Merge a module, or a composition, into a base model's weights, one shard at a time.

For deployment without PEFT: ``bake(pem, "base_dir", "out_dir")`` writes a copy of a Hugging
Face checkpoint directory (``model.safetensors``, or shards listed by
``model.safetensors.index.json``) in which every adapted layer holds its merged weight
(LoRA: ``W + s B A``; (IA)3: PEFT's rescaling, see each kind's ``merge_into``) and every
``modules_to_save`` tensor replaces, or is added beside, the base's. Nothing else changes: the
other tensors are copied byte for byte, in their dtypes (integer buffers included), and the
other files and folders of the directory (config, tokenizer, a sentence-transformers pooling or
Dense folder) are copied as they are; other weight files at the top (``*.bin``, ``*.gguf``, ...)
and ``onnx/``/``openvino/`` exports, which would hold the unmerged weights, are left out.

Memory stays near one base tensor plus the module: the composed module is held whole (float32,
or float64 where a base tensor or a module is float64), and each shard is streamed tensor by
tensor into its copy. Each updated tensor is read into one reused buffer (the size of the largest
updated tensor) and merged there a block of rows at a time (:data:`BLOCK_ELEMENTS`; float32 and
float64 weights in place; bfloat16 and float16 ones widened to float32 a block at a time and
rounded back into the buffer on the bits, :mod:`pemarith.dtypes`), ``s B A`` formed once, and
the buffer written as it is. :data:`WORKERS` threads share the blocks of each tensor. The
tensors that do not change are copied through the same buffer.
Like ``compose``, it needs no torch and no model code.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bake_base import INDEX_NAME, base_shards, locate, read_into
from .bake_config import head_config
from .dtypes import STORED, bf16_bits_to_f32, cast, f32_to_bf16_bits, finite_bytes, scratch
from .errors import AdapterError, CompatibilityError, OutputError
from .fs import output_dir
from .io import (
    DTYPES,
    PROVENANCE_NAME,
    SafetensorsWriter,
    is_adapter_output,
    write_json,
)
from .module import PEM
from .version import __version__

PEFT_PREFIX = "base_model.model."
# Threads that merge the blocks of rows of each updated tensor (numpy releases the GIL in the
# conversions and the products), and the elements in a block (4 MiB of float32).
WORKERS = 2
BLOCK_ELEMENTS = 1 << 20
# Other copies of the base's weights are not copied: they would hold the unmerged weights.
# Sub-folders are copied whole (a sentence-transformers Dense layer keeps its own weights there)
# except those that hold exported copies of the model.
SKIPPED_SUFFIXES = (".bin", ".h5", ".msgpack", ".onnx", ".gguf", ".pt", ".pth", ".ckpt", ".safetensors")
SKIPPED_DIRS = ("onnx", "openvino")


@dataclass(frozen=True)
class BakeReport:
    """What ``bake`` wrote: ``merged`` maps adapted layers to the base keys they changed,
    ``replaced``/``added`` list the ``modules_to_save`` keys, ``skipped`` the files not copied,
    ``config`` the ``config.json`` keys set for a classifier head (:mod:`pemarith.bake_config`)."""

    path: Path
    shards: list[str]
    merged: dict[str, list[str]]
    replaced: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    config: list[str] = field(default_factory=list)  # config.json keys set for the merged head


def _row_blocks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """``[(i, j)]``: the blocks of rows of a weight merged one at a time (about
    :data:`BLOCK_ELEMENTS` each; a weight that is not 2-d is one block)."""
    if len(shape) != 2:
        return [(0, shape[0] if shape else 0)]
    rows = max(1, BLOCK_ELEMENTS // max(1, shape[1]))
    return [(i, min(i + rows, shape[0])) for i in range(0, shape[0], rows)] or [(0, 0)]


def _widened(stored: np.ndarray, code: str) -> np.ndarray:
    """A float32 or float64 array of ``stored``'s values: itself for float32/float64, else a float32
    copy in this thread's scratch (bfloat16 by a shift of the bits, float16 by numpy)."""
    if code in ("F32", "F64"):
        return stored
    work = scratch("bake.float32", stored.shape, np.float32)
    if code == "BF16":
        return bf16_bits_to_f32(stored, out=work)
    work[...] = stored
    return work


def _encode_into(stored: np.ndarray, values: np.ndarray, code: str) -> None:
    """Round ``values`` into ``stored`` (the tensor's bytes; bfloat16 on the bits) unless it is them."""
    if values is stored:
        return
    if code == "BF16":
        f32_to_bf16_bits(np.asarray(values, dtype=np.float32), out=stored)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            stored[...] = values


def _merge_rows(
    kind: Any,
    parts: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    stored: np.ndarray,
    code: str,
    key: str,
    i: int,
    j: int,
) -> None:
    """Merge the update into rows ``i:j`` of ``stored``, in place (widened and rounded back a block
    at a time, so no full-size copy of the weight is made)."""
    block = stored[i:j] if stored.ndim == 2 else stored
    work = _widened(block, code)
    kind.merge_into(parts, config, work, key, stored.shape, i)
    _encode_into(block, work, code)


def bake(
    pem: PEM,
    base: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mode: str | None = None,
    rank: int | None = None,
    keep: str | None = None,
    force: bool = False,
    protect: tuple[str | os.PathLike[str], ...] = (),
    method: Any = None,
    density: float | None = None,
    majority_sign: str | None = None,
    seed: int | None = None,
    space: str | None = None,
) -> BakeReport:
    """Write ``base`` with ``pem`` merged into its weights to ``out`` (atomically; see the module
    docstring). ``mode``/``rank``/``keep`` and the merge ``method`` options are those of :meth:`PEM.save`."""
    t0 = time.perf_counter()
    base = Path(base).expanduser().resolve()
    if not base.is_dir():
        raise AdapterError(f"base model directory not found: {base}")
    infos, metas, index = base_shards(base)
    owner = {k: shard for shard, keys in infos.items() for k in keys}
    config = pem.output_config(mode, rank)
    kind = pem.kind
    spec = pem.merge_spec(method, density=density, majority_sign=majority_sign, seed=seed, space=space)
    first = next(iter(pem.adapters.values()))

    # plan: base key -> (layer, "weight" | "bias") for updates, or the module key that replaces it
    updates: dict[str, tuple[str, str]] = {}
    merged: dict[str, list[str]] = {}
    for layer in first.layers:
        short = layer.removeprefix(PEFT_PREFIX)
        wkey = locate(f"{short}.weight", owner)
        if wkey is None:
            raise CompatibilityError(
                f"module {short!r} has no weight {short}.weight in {base}; is this the adapter's base model?"
            )
        updates[wkey] = (layer, "weight")
        merged[short] = []  # the keys changed, filled in while writing
        bkey = wkey.removesuffix(".weight") + ".bias"
        if bkey in owner:
            updates[bkey] = (layer, "bias")
    # the composed module, held whole (small): float64 where a base tensor or a module is float64,
    # else float32, what the merge computes with (bfloat16 would round the factors before the merge)
    f64 = any(infos[owner[k]][k].dtype == "F64" for k in updates) or any(
        "F64" in a.dtypes.values() for a in pem.adapters.values()
    )
    wide = np.float64 if f64 else np.float32
    module = dict(pem.iter_tensors(mode, rank, keep, dtype=wide, method=spec))
    replace: dict[str, str] = {}
    added: list[str] = []
    for key in first.extra:
        short = key.removeprefix(PEFT_PREFIX)
        target = locate(short, owner)
        if target is None:
            added.append(short)
            replace[short] = key
        else:
            if tuple(module[key].shape) != infos[owner[target]][target].shape:
                raise CompatibilityError(
                    f"{short!r}: the module's copy has shape {module[key].shape} but "
                    f"the base's {target} has {infos[owner[target]][target].shape}"
                )
            replace[target] = key

    parts: dict[str, dict[str, np.ndarray]] = {}  # layer -> {part: array} of the composed module
    for key, array in module.items():
        split = kind.split_key(key)
        if split is not None:
            parts.setdefault(split[0], {})[split[1]] = array

    shards = list(infos)
    last = shards[-1]
    provenance = json.dumps(
        {
            "pemarith_version": __version__,
            "expression": str(pem),
            "mode": mode or "factorwise",
            "rank": rank,
            "base": str(base),
            **spec.describe(),
        }
    )
    inputs = [base, *(a.path for a in pem.adapters.values()), *(Path(p) for p in protect)]
    workers = max(1, min(WORKERS, os.cpu_count() or 1))
    largest = max((infos[owner[k]][k].end - infos[owner[k]][k].start for k in updates), default=0)
    buffer = bytearray(largest)  # the one updated tensor held: read, merged in place, written

    def merge_one(src: Path, key: str, pool: ThreadPoolExecutor) -> tuple[memoryview, bool]:
        """Read ``key`` into the buffer and merge its update there: (its bytes, changed)."""
        info = infos[owner[key]][key]
        layer, what = updates[key]
        if info.dtype not in DTYPES:
            raise CompatibilityError(f"{key}: a base tensor of dtype {info.dtype} cannot take an update")
        raw = read_into(src, info, key, buffer)
        stored = np.frombuffer(raw, dtype=STORED[info.dtype]).reshape(info.shape)
        if what == "weight":
            blocks = _row_blocks(info.shape)
            if len(blocks) == 1:
                _merge_rows(kind, parts[layer], config, stored, info.dtype, key, *blocks[0])
            else:  # the blocks of rows merge on the workers (numpy releases the GIL)
                list(
                    pool.map(
                        lambda b: _merge_rows(kind, parts[layer], config, stored, info.dtype, key, *b), blocks
                    )
                )
            changed = True
        else:
            wkey = key.removesuffix(".bias") + ".weight"
            new = kind.merge_bias(
                parts[layer], config, _widened(stored, info.dtype), infos[owner[wkey]][wkey].shape, key
            )
            if new is not None:
                _encode_into(stored, np.asarray(new), info.dtype)
            changed = new is not None
        if changed and not finite_bytes(raw, info.dtype):
            raise OutputError(
                f"{key[:100]}: the merged weights are not finite in {info.dtype}; use smaller coefficients"
            )
        return raw, changed

    skipped: list[str] = []
    config_updated: list[str] = []
    weight_map: dict[str, str] = {}
    with output_dir(
        out,
        inputs,
        force=force,
        is_previous=is_adapter_output,
        what="bake output (a directory with pemarith.json)",
    ) as tmp:
        for shard in shards:
            src = base / shard
            keys = list(infos[shard])
            specs = [(k, infos[shard][k].dtype, infos[shard][k].shape) for k in keys]
            extra = list(added) if shard == last else []
            specs += [(k, first.dtypes[replace[k]], tuple(module[replace[k]].shape)) for k in extra]
            meta = {**metas[shard], "pemarith": provenance}
            meta.setdefault("format", "pt")
            writer = SafetensorsWriter(tmp / shard, specs, meta)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="pemarith-bake")
            try:
                for key in keys:
                    info = infos[shard][key]
                    weight_map[key] = shard
                    if key in replace:
                        writer.write(key, cast(module[replace[key]], info.dtype))
                    elif key not in updates:
                        writer.copy_tensor(key, src, info, buffer=buffer if len(buffer) >= 1 << 20 else None)
                    else:
                        raw, changed = merge_one(src, key, pool)
                        writer.write_bytes(key, raw)
                        del raw  # the buffer's view: released before the buffer is reused
                        if changed:
                            merged[updates[key][0].removeprefix(PEFT_PREFIX)].append(key)
                for key in extra:
                    weight_map[key] = shard
                    writer.write(key, cast(module[replace[key]], first.dtypes[replace[key]]))
                writer.close()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                writer.abort()
                raise
            finally:
                pool.shutdown(wait=True)
        if index is not None:
            total = sum((tmp / s).stat().st_size for s in shards)
            new_index = {
                **index,
                "metadata": {**(index.get("metadata") or {}), "total_size": total},
                "weight_map": weight_map,
            }
            (tmp / INDEX_NAME).write_text(json.dumps(new_index, indent=2) + "\n", encoding="utf-8")
        for item in sorted(base.iterdir()):
            if item.name in shards or item.name in (INDEX_NAME, PROVENANCE_NAME):
                continue
            if item.is_dir() and item.name not in SKIPPED_DIRS:
                shutil.copytree(item, tmp / item.name)
            elif item.is_dir() or item.suffix in SKIPPED_SUFFIXES:
                skipped.append(item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        config_file = tmp / "config.json"
        if config_file.is_file():
            try:
                base_config = json.loads(config_file.read_text(encoding="utf-8"))
            except ValueError as e:
                raise AdapterError(f"{base / 'config.json'}: not valid JSON ({e})") from None
            heads = {k: tuple(module[v].shape) for k, v in replace.items()}
            new_config = head_config(
                base_config, first.config, heads, [a.path for a in pem.adapters.values()]
            )
            if new_config is not None:
                config_file.write_text(json.dumps(new_config, indent=2) + "\n", encoding="utf-8")
                config_updated = sorted(k for k in new_config if new_config[k] != base_config.get(k))
        write_json(
            tmp / PROVENANCE_NAME,
            {
                **json.loads(provenance),
                "shards": shards,
                "inputs": {n: str(a.path) for n, a in pem.adapters.items()},
            },
        )
    return BakeReport(
        Path(out).expanduser().resolve(),
        shards,
        merged,
        sorted(k for k in replace if k not in added),
        added,
        skipped,
        time.perf_counter() - t0,
        config_updated,
    )
