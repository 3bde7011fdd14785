"""Floors for the benchmarks: what any tool must at least do, measured the same way.

- ``copy_cmd(srcs, dest)``: a fresh Python process that imports numpy and copies ``srcs`` (files
  or directories) into ``dest``, every file fsynced (``os.fsync``), plain reads and writes (no
  reflinks, no ``copy_file_range`` shortcuts): the bytes a pemarith run must read and write,
  made durable as pemarith's output is.
- ``cp_cmd(srcs, dest)``: ``cp -r --reflink=never`` (not fsynced: the page cache absorbs it).
- ``uptime()``: the ``uptime`` line (load averages), printed before and after every benchmark;
  ``busy(before, after, own)`` says whether the load beyond the benchmark's own processes
  exceeded 1.0, in which case the figures are not to be published.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHUNK = 16 << 20


def copy_cmd(srcs: list[Path], dest: Path) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "_copy", str(dest), *map(str, srcs)]


def cp_cmd(srcs: list[Path], dest: Path) -> list[str]:
    return ["sh", "-c", 'mkdir -p "$0" && cp -r --reflink=never "$@" "$0"', str(dest), *map(str, srcs)]


def _copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while chunk := fi.read(CHUNK):
            fo.write(chunk)
        os.fsync(fo.fileno())


def copy_tree(srcs: list[Path], dest: Path) -> None:
    """The floor's child: import numpy (as pemarith does), copy, fsync files and directories."""
    import numpy  # noqa: F401

    dest.mkdir(parents=True, exist_ok=True)
    for src in srcs:
        if src.is_dir():
            for root, _, files in os.walk(src):
                target = dest / src.name / Path(root).relative_to(src)
                target.mkdir(parents=True, exist_ok=True)
                for name in files:
                    _copy_file(Path(root) / name, target / name)
                fd = os.open(target, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        else:
            _copy_file(src, dest / src.name)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def precompile() -> str:
    """Byte-compile pemarith's sources, as ``pip install`` does, and say so.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on these machines) an editable install would
    otherwise recompile every imported pemarith module in every measured process (about 20 ms
    for ``inspect``), while numpy, torch and PEFT load their installed ``.pyc`` files: a handicap
    no user has. ``compileall`` writes the caches regardless of that variable.
    """
    import compileall

    import pemarith

    root = Path(pemarith.__file__).parent
    ok = compileall.compile_dir(str(root), quiet=1)
    return f"# byte-compiled {root} ({'ok' if ok else 'FAILED'}; PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})"


def uptime() -> str:
    exe = shutil.which("uptime")
    if exe:
        return subprocess.run([exe], capture_output=True, text=True, check=False).stdout.strip()
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def busy(before: float, after: float, own: float = 1.0) -> bool:
    """Whether the 1-minute load beyond the benchmark's own processes exceeded 1.0: before it
    started (nothing of ours ran), or after, less ``own`` (the one process it runs at a time)."""
    return before > 1.0 or after - own > 1.0


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "_copy":
    copy_tree([Path(p) for p in sys.argv[3:]], Path(sys.argv[2]))
