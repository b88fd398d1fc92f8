"""Runs every benchmark: ``python -m benchmarks`` (``make bench``)."""

import importlib
import sys

for name in ("benchmarks.metadata_bench", "benchmarks.checkpoint_bench"):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        print(f"{name}: not present", file=sys.stderr)
        continue
    print(f"== {name}")
    module.main(sys.argv[1:])
