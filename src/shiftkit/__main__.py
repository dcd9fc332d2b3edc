"""``python -m shiftkit`` is the ``shiftkit`` command (also under ``torchrun -m shiftkit``)."""

import sys

from .cli import entry

sys.exit(entry())
