"""``python -m datarax.checkpoint``: the ``datarax-checkpoint`` command."""

import sys

from datarax.checkpoint.cli import main

sys.exit(main())
