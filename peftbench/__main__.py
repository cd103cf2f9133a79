"""``python -m peftbench``: the ``peftbench`` command, for the Python it runs under."""

import sys

from peftbench.cli import main

sys.exit(main())
