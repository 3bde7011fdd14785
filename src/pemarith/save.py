"""Writing a composition as a PEFT adapter directory (:meth:`pemarith.module.PEM.save`): the
tensors streamed layer by layer into ``adapter_model.safetensors``, ``adapter_config.json`` and
the provenance ``pemarith.json``, all atomically (:func:`pemarith.fs.output_dir`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fs import output_dir
from .io import PROVENANCE_NAME, SafetensorsWriter, is_adapter_output, write_json
from .version import __version__

if TYPE_CHECKING:
    from .methods import MergeSpec
    from .module import PEM


@dataclass(frozen=True)
class SaveReport:
    """What ``PEM.save`` wrote: ``layer_errors`` maps layers to their relative SVD error."""

    path: Path
    mode: str
    rank: int | None
    terms: dict[str, float]
    layer_errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def write_adapter(
    pem: PEM,
    out: str | os.PathLike[str],
    mode: str,
    rank: int | None,
    keep: str | None,
    dtype: Any,
    spec: MergeSpec,
    force: bool,
    protect: tuple[str | os.PathLike[str], ...],
) -> SaveReport:
    """Write ``pem`` (checked by the caller) to ``out`` as :meth:`~pemarith.module.PEM.save` says."""
    t0 = time.perf_counter()
    specs = pem._plan(mode, rank, dtype)
    config = pem.output_config(mode, rank)
    # sha256 of the inputs are known once their bytes have been read: same-length placeholders
    # size the header now, the real values are written at the end (io.Adapter.sha256)
    provenance = {**provenance_of(pem, mode, rank, keep, specs, hashes=False), **spec.describe()}
    layers = list(next(iter(pem.adapters.values())).layers)
    reserve = (
        2 * len(json.dumps({layer: "9.999999e-100" for layer in layers})) + 64 if rank is not None else 0
    )
    errors: dict[str, float] = {}
    inputs = [a.path for a in pem.adapters.values()] + [Path(p) for p in protect]
    with output_dir(
        out,
        inputs,
        force=force,
        is_previous=is_adapter_output,
        what="pemarith output (a directory with pemarith.json)",
    ) as tmp:
        writer = SafetensorsWriter(
            tmp / "adapter_model.safetensors",
            specs,
            {"format": "pt", "pemarith": json.dumps(provenance)},
            reserve,
        )
        try:
            for layer, tensors, err in pem._iter_layers(mode, rank, keep, dtype, spec):
                for key, array in tensors.items():
                    writer.write(key, array)
                if err is not None:
                    errors[layer] = err
        except BaseException:
            writer.abort()
            raise
        provenance = {**provenance_of(pem, mode, rank, keep, specs), **spec.describe()}
        if rank is not None:
            provenance["layer_errors"] = {k: float(f"{v:.6e}") for k, v in errors.items()}
        writer.close({"format": "pt", "pemarith": json.dumps(provenance)})
        write_json(tmp / "adapter_config.json", config)
        write_json(tmp / PROVENANCE_NAME, provenance)
    return SaveReport(
        Path(out).expanduser().resolve(), mode, rank, dict(pem.terms), errors, time.perf_counter() - t0
    )


def provenance_of(
    pem: PEM,
    mode: str,
    rank: int | None,
    keep: str | None,
    specs: list[tuple[str, str, tuple[int, ...]]],
    hashes: bool = True,
) -> dict[str, Any]:
    """What ``pemarith.json`` records of a saved composition (the inputs' sha256, once read)."""
    return {
        "pemarith_version": __version__,
        "expression": str(pem),
        "terms": dict(pem.terms),
        "mode": mode,
        "rank": rank,
        "keep": keep,
        "peft_type": pem.kind.name,
        "dtypes": sorted({c for _, c, _ in specs}),
        "inputs": [
            {
                "name": n,
                "path": str(a.path),
                "weights_file": a.weights_path.name,
                "sha256": a.sha256() if hashes else "0" * 64,
            }
            for n, a in pem.adapters.items()
        ],
    }
