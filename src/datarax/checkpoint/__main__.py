"""``python -m datarax.checkpoint``: the ``datarax-checkpoint`` command."""

import sys

from datarax.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
