"""pemarith: compose parameter-efficient modules (LoRA, (IA)3) with arithmetic.

The core is model-free: it reads and writes PEFT adapter files with numpy alone
and never imports torch, transformers or peft.

>>> import pemarith
>>> merged = pemarith.compose("0.5*a + 0.5*b", {"a": "path/a", "b": "path/b"})  # doctest: +SKIP
>>> merged.save("path/merged")                                                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["PEM", "__version__", "compose", "diagnose", "load"]

if TYPE_CHECKING:
    from .construct import compose, load
    from .diagnostics import diagnose
    from .module import PEM


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import pemarith` (and `pemarith --help`) free of numpy until used.
    if name == "PEM":
        from .module import PEM

        return PEM
    if name in ("compose", "load"):
        from . import construct

        return getattr(construct, name)
    if name == "diagnose":
        from .diagnostics import diagnose

        return diagnose
    raise AttributeError(f"module 'pemarith' has no attribute {name!r}")
