"""``python -m pemarith.hf.sweep_worker CONFIG.json``: one peer of a local distributed sweep
(started by :func:`pemarith.hf.distributed.start_local_workers`; its own module so that the claims do not
import the sweep that uses them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def worker_main(argv: list[str] | None = None) -> int:
    """Run the sweep of the JSON configuration ``argv[0]`` as one of its workers."""
    from ..errors import exit_status
    from .sweep import SweepConfig, run_sweep

    path = (argv if argv is not None else sys.argv[1:])[0]
    fields = json.loads(Path(path).read_text())
    return exit_status(lambda: run_sweep(SweepConfig(**fields)) and 0, "sweep")


if __name__ == "__main__":
    sys.exit(worker_main())
