"""``python -m pemarith`` is the ``pemarith`` console script."""

from pemarith.cli import main

raise SystemExit(main())
