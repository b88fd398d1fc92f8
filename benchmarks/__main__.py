"""Runs every benchmark: ``python -m benchmarks`` (``make bench``)."""

import sys

from benchmarks import checkpoint_bench, metadata_bench

for module in (metadata_bench, checkpoint_bench):
    print(f"== {module.__name__}")
    module.main(sys.argv[1:])
