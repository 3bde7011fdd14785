import sys

from pemarith.cli import main

sys.exit(main())
