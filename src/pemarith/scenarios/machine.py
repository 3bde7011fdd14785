"""Where numbers were computed and how many threads computed them (recorded in every result)."""

from __future__ import annotations

import json
import platform
from typing import Any


def machine() -> dict[str, Any]:
    """Where the numbers were computed (for the runtime paragraph of the docs)."""
    import os

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def set_threads(n: int | None) -> None:
    """torch's intra-op threads (on a busy 2-core machine 1 thread is 3-4x faster than 2)."""
    if n is None:
        return
    import torch

    torch.set_num_threads(n)


def json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
