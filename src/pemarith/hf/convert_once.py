"""Convert once, atomically: a derived checkpoint is built in a temporary directory beside its
target and renamed onto it with a marker file written last, so concurrent processes and crashes
never leave a half-written checkpoint. Used for the GGUF models of ``hf.models``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pemarith.errors import PemarithError

#: Written last into a converted checkpoint: its presence means the conversion is complete.
CONVERSION_MARKER = "pemarith_conversion.json"


def is_converted(path: Path) -> bool:
    """True when ``path`` is a complete converted checkpoint (its marker file exists)."""
    return (path / CONVERSION_MARKER).is_file()


def convert_once(target: Path, convert: Callable[[Path], None], info: dict[str, Any]) -> Path:
    """Create ``target`` by ``convert(tmp_dir)`` unless it already exists; safe under races.

    ``convert`` writes the checkpoint into a fresh temporary directory beside ``target``; the
    marker file (``info`` as JSON) is written last, then the directory is renamed onto
    ``target`` in one step. ``rename`` of a directory onto an existing non-empty one fails, so
    when another process finished first its result is kept and ours is discarded. A crash
    leaves only a ``.tmp-`` directory, never a half-written ``target``.
    """
    if is_converted(target):
        return target
    if target.exists() and any(target.iterdir()):
        raise PemarithError(
            f"{target} exists but is not a complete pemarith conversion (no {CONVERSION_MARKER});"
            " delete it and retry"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        start = time.perf_counter()
        convert(tmp)
        info = {**info, "seconds": round(time.perf_counter() - start, 2)}
        (tmp / CONVERSION_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        _make_readable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_converted(target):  # not a lost race: a real problem
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_readable(root: Path) -> None:
    # mkdtemp makes the directory private (0700); a shared cache should follow the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
