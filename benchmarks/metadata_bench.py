"""Records/s of ``MetadataManager`` against the straightforward implementation.

Run: ``python -m benchmarks.metadata_bench`` (one process; prints a table and ratios).
Every timed loop is preceded by a warm-up that compiles what it needs; the fast manager's
keys are checked bit for bit against the baseline's before anything is timed.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from benchmarks.straightforward import StraightforwardManager
from datarax.core.metadata import MetadataManager

BATCH = 4096


def _rate(run: Callable[[int], None], n: int, repeats: int) -> float:
    """Best records/s over ``repeats`` timed runs of ``run(n)``."""
    run(min(n, 2000))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(n)
        best = min(best, time.perf_counter() - start)
    return n / best


def _loop(manager: object, read_keys: bool) -> Callable[[int], None]:
    def run(n: int) -> None:
        create = manager.create_metadata  # type: ignore[attr-defined]
        if read_keys:
            keys = [create(i).rng_key for i in range(n)]
            jax.block_until_ready(keys)
        else:
            for i in range(n):
                create(i)

    return run


def _batches(manager: MetadataManager) -> Callable[[int], None]:
    keys = np.arange(BATCH)

    def run(n: int) -> None:
        batch = None
        for _ in range(n // BATCH):
            batch = manager.create_batch_metadata(keys)
        if batch is not None and batch.rng_key is not None:
            batch.rng_key.block_until_ready()

    return run


def _check_identical(n: int = 300) -> None:
    fast = MetadataManager(rngs=nnx.Rngs(metadata=7))
    slow = StraightforwardManager(rngs=nnx.Rngs(metadata=7))
    for i in range(n):
        a, b = fast.create_metadata(i), slow.create_metadata(i)
        same = np.array_equal(jax.random.key_data(a.rng_key), jax.random.key_data(b.rng_key))
        if not same or (a.index, a.global_step) != (b.index, b.global_step):
            raise AssertionError(f"record {i} differs between the fast and baseline managers")


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer records (smoke run)")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    repeats = 2 if args.quick else 3
    _check_identical()

    rows = []
    for label, rngs, read, n_fast, n_slow in (
        ("create_metadata, no rngs", False, False, 300_000, 30_000),
        ("create_metadata, rngs", True, False, 200_000, 2_000),
        ("create_metadata + read rng_key", True, True, 30_000, 2_000),
    ):
        new_rngs = (lambda: nnx.Rngs(metadata=0)) if rngs else (lambda: None)
        fast = _rate(_loop(MetadataManager(rngs=new_rngs()), read), n_fast // scale, repeats)
        slow = _rate(_loop(StraightforwardManager(rngs=new_rngs()), read), n_slow // scale, repeats)
        rows.append((label, fast, slow))
    for label, rngs in (
        ("create_batch_metadata(4096), no rngs", False),
        ("create_batch_metadata(4096), rngs", True),
    ):
        manager = MetadataManager(rngs=nnx.Rngs(metadata=0) if rngs else None)
        fast = _rate(_batches(manager), BATCH * 400 // scale, repeats)
        slow_manager = StraightforwardManager(rngs=nnx.Rngs(metadata=0) if rngs else None)
        slow = _rate(_loop(slow_manager, rngs), (20_000 if not rngs else 2_000) // scale, repeats)
        rows.append((label, fast, slow))

    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}, jax {jax.__version__}, "
        f"backend {jax.default_backend()}"
    )
    print(f"{'benchmark':40} {'datarax rec/s':>15} {'straightforward rec/s':>22} {'ratio':>8}")
    for label, fast, slow in rows:
        print(f"{label:40} {fast:15,.0f} {slow:22,.0f} {fast / slow:7.1f}x")
    return rows


if __name__ == "__main__":
    main()
