"""``python -m datarax.demo``."""

import sys

from datarax.demo import main

sys.exit(main())
