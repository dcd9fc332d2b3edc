"""``python -m shiftkit`` is the ``shiftkit`` command (also under ``torchrun -m shiftkit``)."""

import sys

from .cli import main

sys.exit(main())
