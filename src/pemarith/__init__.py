"""pemarith: compose parameter-efficient modules (LoRA, (IA)3) with arithmetic.

The core is model-free: it reads and writes PEFT adapter files with numpy and safetensors
and never imports torch, transformers or peft.

>>> import pemarith
>>> merged = pemarith.compose("0.5*a + 0.5*b", {"a": "path/a", "b": "path/b"})  # doctest: +SKIP
>>> merged.save("path/merged")                                                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["PEM", "__version__", "compose", "diagnose", "load"]

if TYPE_CHECKING:
    from .diagnostics import diagnose
    from .module import PEM, compose, load


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import pemarith` (and `pemarith --help`) free of numpy until used.
    if name in ("PEM", "compose", "load"):
        from . import module

        return getattr(module, name)
    if name == "diagnose":
        from .diagnostics import diagnose

        return diagnose
    raise AttributeError(f"module 'pemarith' has no attribute {name!r}")
