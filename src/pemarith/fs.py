"""The one way pemarith writes an output directory: reserved, atomic, durable, and never over
what it did not create.

:func:`output_dir` yields a hidden temporary directory beside the target and renames it to the
target at the end. Its rules (docs/SPEC.md, "Outputs"):

- **Never over the wrong thing.** The target may not be empty text, the working directory or one
  of its ancestors, and may not be, contain or lie inside a protected path (every input given,
  used by the expression or not; the base of ``bake``). An existing target is refused unless
  ``force``; with ``force`` only an empty directory or an earlier output of the same command
  (``is_previous(target)``: e.g. it holds ``pemarith.json``) is replaced. Anything else is refused
  with the reason.
- **Reserved.** An exclusive ``flock`` on ``.NAME.pemarith-lock`` beside the target is held from
  before the work starts until after the rename, so two pemarith processes cannot write one
  output; the rename itself uses ``renameat2(RENAME_NOREPLACE)`` where the kernel has it, so a
  directory that someone else creates at the target meanwhile is never replaced (without
  ``force``) and the checks are repeated just before the rename.
- **Atomic and durable.** Every file and directory written is fsynced before the rename, and the
  parent directory after it: after a crash the target is either absent, the old one, or complete.
- **One writer.** :func:`write_file` / :func:`write_with` replace a single file (a sweep's
  results, a store unit, a report, a plot) the same way: temporary, fsync, ``os.replace``.
- **Self-cleaning.** Temporary directories are named ``.NAME.pemarith-tmp-*`` (and
  ``.NAME.pemarith-old-*`` for a replaced target moved aside). They are only ever created by the
  holder of NAME's lock, so once a new run holds that lock, any left by a killed process (SIGKILL
  cannot be caught) are stale, and it removes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError

LOCK_SUFFIX = ".pemarith-lock"
_NAME_LIMIT = 200  # characters of a path echoed in a message


def _show(path: str | os.PathLike[str]) -> str:
    text = str(path)
    return text if len(text) <= _NAME_LIMIT else text[: _NAME_LIMIT // 2] + "..." + text[-_NAME_LIMIT // 2 :]


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or inside it."""
    return a == b or b in a.parents


def resolve_output(target: str | os.PathLike[str]) -> Path:
    """The absolute path ``target`` names (symlinks resolved); empty text and symlink loops are
    refused."""
    if str(target).strip() == "":
        raise OutputError("the output path is empty (is a variable such as $OUT unset?); name a directory")
    try:
        return Path(target).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop on Python < 3.13
        raise OutputError(f"cannot resolve the output {_show(target)}: {e}") from None


def check_target(
    out: Path, protect: Iterable[Path], force: bool, is_previous: Callable[[Path], bool] | None, what: str
) -> None:
    """Refuse ``out`` as an output unless the rules of the module docstring allow it."""
    cwd = Path.cwd().resolve()
    if _inside(cwd, out):
        where = "the working directory" if out == cwd else "an ancestor of the working directory"
        raise OutputError(f"output {_show(out)} is {where}; name a new directory")
    for p in protect:
        p = Path(p).expanduser().resolve()
        if _inside(out, p) or _inside(p, out):
            rel = "is" if out == p else ("lies inside" if _inside(out, p) else "contains")
            raise OutputError(
                f"output {_show(out)} would overwrite the input {_show(p)} (it {rel} it); "
                "choose another directory"
            )
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise OutputError(f"output {_show(out)} already exists; pass --force (force=True) to replace it")
    if out.is_symlink() or not out.is_dir():
        raise OutputError(
            f"output {_show(out)} exists and is not a directory; only an empty directory "
            f"or an earlier {what} may be replaced: choose another path"
        )
    if any(out.iterdir()) and not (is_previous is not None and is_previous(out)):
        raise OutputError(
            f"output {_show(out)} is a directory that pemarith did not write (no earlier "
            f"{what} there); only an empty directory or an earlier {what} may be "
            "replaced: choose another directory"
        )


def check_records_dir(
    out: str | os.PathLike[str], is_previous: Callable[[Path], bool], what: str, protect: Iterable[Path] = ()
) -> Path:
    """Check a directory that a command keeps adding records to (a sweep, a search): it may be
    new, empty, or an earlier one of its kind (``is_previous``), never the working directory, an
    ancestor of it, a file, a protected path or another non-empty directory. Returns it resolved."""
    path = resolve_output(out)
    check_target(path, protect, force=True, is_previous=is_previous, what=what)
    return path


_NOREPLACE, _EXCHANGE = 1, 2  # renameat2 flags (linux/fs.h)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the kernel or libc lacks it."""
    libc = _libc()
    if libc is None:
        return False
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """``rename(src, dst)`` that fails with FileExistsError if ``dst`` exists (atomic where the
    kernel offers ``renameat2(RENAME_NOREPLACE)``, else checked just before)."""
    if _renameat2(src, dst, _NOREPLACE):
        return
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


_LIBC: list[ctypes.CDLL | None] = []


def _libc() -> ctypes.CDLL | None:
    if not _LIBC:
        lib = None
        with contextlib.suppress(OSError, AttributeError):
            lib = ctypes.CDLL(None, use_errno=True)
            lib.renameat2.argtypes = [
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_uint,
            ]
        if lib is not None and not hasattr(lib, "renameat2"):
            lib = None
        _LIBC.append(lib)
    return _LIBC[0]


@contextlib.contextmanager
def _reserve(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.NAME.pemarith-lock`` beside ``out`` (a busy lock is an error)."""
    import fcntl

    lock = out.parent / f".{out.name}{LOCK_SUFFIX}"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"output {_show(out)} is being written by another pemarith process "
                f"(it holds {lock.name}); wait for it or choose another directory"
            ) from None
        # The file may have been unlinked by the previous holder after we opened it: retry then.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def remove_stale(out: Path) -> list[Path]:
    """Remove the temporary directories a killed run left for ``out`` (call with NAME's lock held)."""
    pattern = re.compile(re.escape(f".{out.name}.pemarith-") + r"(?:tmp|old)-[A-Za-z0-9_]+")
    removed = []
    with contextlib.suppress(OSError):
        for item in out.parent.iterdir():
            if pattern.fullmatch(item.name) and item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
                removed.append(item)
    return removed


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (bottom-up), then ``root`` itself."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                _fsync(path, os.O_RDONLY)
        _fsync(dirpath, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_dir(
    target: str | os.PathLike[str],
    inputs: Iterable[Path] = (),
    force: bool = False,
    is_previous: Callable[[Path], bool] | None = None,
    what: str = "pemarith output",
) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success rename it to ``target``.

    ``inputs`` are the protected paths, ``is_previous`` says whether an existing non-empty
    directory is an earlier output of this command (what ``force`` may replace) and ``what``
    names that output in messages. See the module docstring for the rules. On any error the
    temporary directory (and any parent directory created for it) is removed.
    """
    out = resolve_output(target)
    protect = [Path(p) for p in inputs]
    check_target(out, protect, force, is_previous, what)
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        for d in reversed(created):
            d.mkdir()
    except OSError as e:
        _remove_created(created)
        raise OutputError(f"cannot create output {_show(out)}: {e.strerror or e}") from None
    try:
        with _reserve(out):
            remove_stale(out)
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.pemarith-tmp-", dir=out.parent))
                umask = os.umask(0)
                os.umask(umask)
                tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
            except OSError as e:
                raise OutputError(f"cannot create output {_show(out)}: {e.strerror or e}") from None
            try:
                yield tmp
                fsync_tree(tmp)
                check_target(out, protect, force, is_previous, what)  # again: time of use
                _install(tmp, out)
                _fsync(out.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        _remove_created(created)
        raise


def _install(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``. An existing ``out`` (already checked) is swapped with ``tmp`` in
    one ``renameat2(RENAME_EXCHANGE)``, so that the target is always the old or the new output,
    then the old one (now at ``tmp``) is deleted; without renameat2 the old one is moved aside
    first and deleted only once the new one is in place."""
    if not (out.exists() or out.is_symlink()):
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise OutputError(
                f"output {_show(out)} appeared while pemarith was writing it; nothing was "
                "replaced (run again with --force to replace it)"
            ) from None
        return
    if _renameat2(tmp, out, _EXCHANGE):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.pemarith-old-", dir=out.parent))
    try:
        os.rename(out, old / "x")
    except BaseException:
        old.rmdir()
        raise
    try:
        rename_noreplace(tmp, out)
    except BaseException:
        os.rename(old / "x", out)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_created(created: list[Path]) -> None:
    for d in created:  # innermost first
        with contextlib.suppress(OSError):
            d.rmdir()


def holds(*names: str) -> Callable[[Path], bool]:
    """``is_previous`` for outputs recognised by a file they always contain."""
    return lambda path: any((path / n).is_file() for n in names)


def write_file(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Replace the file ``path`` with ``data`` atomically and durably: a reader sees the old file
    or the new one, never a part (a private temporary beside it, fsynced, then ``os.replace``)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return write_with(path, lambda tmp: tmp.write_bytes(payload))


def write_with(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """:func:`write_file` for a writer that takes a path (e.g. ``fig.savefig``): ``write(tmp)``
    fills a temporary file of the same suffix, which then replaces ``path``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    return path
