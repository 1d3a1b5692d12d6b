"""``python -m focusshot``: the command line (what ``torchrun -m focusshot`` starts on every rank)."""

import sys

from focusshot.cli import main

sys.exit(main())
