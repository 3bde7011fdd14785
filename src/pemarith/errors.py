"""Errors users see. Every message is one line and names the fix where there is one."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable


class PemarithError(Exception):
    """Base class: the CLI prints ``pemarith: error: <message>`` and exits with status 2."""


class ExprError(PemarithError):
    """A malformed or non-linear expression; ``position`` is the 0-based column of the problem."""

    def __init__(self, message: str, text: str = "", position: int | None = None):
        self.text = text
        self.position = position
        where = f" at position {position + 1}" if position is not None else ""
        shown = f" in {(text if len(text) <= 200 else text[:200] + '...')!r}" if text else ""
        super().__init__(f"{message}{where}{shown}")


class AdapterError(PemarithError):
    """A missing, truncated, corrupt or unsupported adapter directory or weights file."""


class CompatibilityError(PemarithError):
    """Adapters that cannot be composed together (kind, base model, targets, shapes, rank)."""


class OutputError(PemarithError):
    """The output path is unusable (exists, is an input, ...)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is, so that it unwinds like Ctrl-C."""


def unwind_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a scheduler's stop) unwind the stack instead of ending the process
    where it stands, so that every ``finally`` runs and half-written outputs (the temporary
    directories of :func:`pemarith.fs.output_dir`) are removed. SIGKILL cannot be caught: the
    next run cleans up after it (``pemarith.fs``)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the default
        pass


PROG = "pemarith"
# what the [hf] extra installs: a command that meets one of these missing says how to install it
HF_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "sklearn",
    "scipy",
    "matplotlib",
    "tqdm",
    "gguf",
    "profanity_check",
    "datasets",
    "yaml",
    "jinja2",
)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def exit_status(run: Callable[[], int | None], command: str | None = None) -> int:
    """Run ``run()`` and map what it raises to the console script's exit status: 0 (or its own
    status), 2 with one line for a user's error, 130/143 for Ctrl-C/SIGTERM, 141 when stdout's
    reader has gone (``pemarith inspect X | head``)."""
    try:
        status = run()
        sys.stdout.flush()  # here, so that a closed pipe is met inside the try
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # exit quietly, as Unix tools do
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except PemarithError as exc:
        return _error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in HF_PACKAGES:
            raise
        return _error(
            f"`{PROG} {command or ''}` needs the hf extra ({top} is missing): pip install 'pemarith[hf]'"
        )
    except OSError as exc:
        # File-system trouble the library did not anticipate: still one line, no traceback.
        where = f": {exc.filename}" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where}")
    except Terminated:
        print(f"{PROG}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
