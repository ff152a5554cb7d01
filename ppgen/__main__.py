"""``python -m ppgen`` is the ``ppgen`` command (so ``torchrun --nproc-per-node N -m ppgen train ...`` launches it)."""

import sys

from ppgen.cli import main

sys.exit(main())
