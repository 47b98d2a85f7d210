"""``python -m ropelab`` (also what ``torchrun -m ropelab train ...`` runs)."""

import sys

from ropelab.cli import main

sys.exit(main())
