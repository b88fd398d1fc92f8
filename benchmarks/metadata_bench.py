"""Records/s of ``MetadataManager`` against the straightforward implementation.

Run: ``python -m benchmarks.metadata_bench`` (one process; prints a table and ratios).
Every timed loop is preceded by a warm-up that compiles what it needs; the fast manager's
keys are checked bit for bit against the baseline's before anything is timed.

The Grain rows create metadata inside a real ``grain.MapDataset`` pipeline of 100k records,
iterated with Grain's default read options (a pool of prefetch threads calling ``.map``
concurrently, so the manager is used from several threads), whose ``.map`` returns each
record's ``rng_key``: per record against the straightforward manager, and per batch of 256
(``.batch(256)`` then ``create_batch_metadata``) against the least a pipeline can do to key
a batch, one ``jit(vmap(fold_in))`` call over the batch's counts. Each Grain row is followed
by Grain alone (a ``.map`` that returns one fixed key): the rate no manager can pass in that
pipeline, so its ratio is the most any manager can reach. The variants of a Grain row take
turns, run by run, so that a change in the machine's load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

try:
    import grain
except ImportError:  # grain is in the test extra; without it the Grain rows are skipped
    grain = None

from benchmarks.straightforward import StraightforwardManager
from datarax.core.metadata import MetadataManager, RecordMetadata

BATCH = 4096
GRAIN_RECORDS = 100_000
GRAIN_BATCH = 256


def _rate(run: Callable[[int], None], n: int, repeats: int) -> float:
    """Best records/s over ``repeats`` timed runs of ``run(n)``."""
    return _rates([(run, n)], repeats)[0]


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


def _grain_records(manager: object, threads: bool = True) -> Callable[[int], None]:
    """The first ``n`` records of a Grain pipeline whose ``.map`` reads each record's key,
    iterated with Grain's default prefetch threads or, without ``threads``, on this one."""
    create = manager.create_metadata  # type: ignore[attr-defined]
    dataset = grain.MapDataset.range(GRAIN_RECORDS).map(lambda i: create(int(i)).rng_key)
    options = None if threads else grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)

    def run(n: int) -> None:
        jax.block_until_ready(list(dataset[:n].to_iter_dataset(options)))

    return run


def _grain_batches(make_keys: Callable[[np.ndarray], jax.Array]) -> Callable[[int], None]:
    """The first ``n`` records, in batches of 256, of a Grain pipeline keying each batch."""
    dataset = grain.MapDataset.range(GRAIN_RECORDS).batch(GRAIN_BATCH).map(make_keys)

    def run(n: int) -> None:
        jax.block_until_ready(list(dataset[: n // GRAIN_BATCH]))

    return run


def _vmap_fold_in() -> Callable[[np.ndarray], jax.Array]:
    """The baseline batch keying: ``fold_in(stream_key, count)`` for the batch's counts."""
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))
    key = jax.random.key(0)
    starts = itertools.count(0, GRAIN_BATCH)  # next() is atomic: safe from Grain's threads

    def make_keys(ids: np.ndarray) -> jax.Array:
        start = next(starts)
        return fold(key, np.arange(start, start + len(ids), dtype=np.uint32))

    return make_keys


def _rates(runs: list[tuple[Callable[[int], None], int]], repeats: int) -> list[float]:
    """Best records/s of each ``run(n)``, the runs taking turns ``repeats`` times, so that
    a change in the machine's load falls on all of them alike."""
    for run, n in runs:
        run(min(n, 2000))
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, (run, n) in enumerate(runs):
            start = time.perf_counter()
            run(n)
            best[i] = min(best[i], time.perf_counter() - start)
    return [n / t for (_, n), t in zip(runs, best, strict=True)]


def _grain_rows(scale: int, repeats: int) -> list[tuple[str, float, float]]:
    if grain is None:
        print("grain is not installed: the Grain rows are skipped (pip install grain)")
        return []
    rows = []
    fixed = _Fixed(jax.random.key(0))
    for label, threads, n in (("", True, 30_000), (", no prefetch threads", False, 100_000)):
        manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
        slow_manager = StraightforwardManager(rngs=nnx.Rngs(metadata=0))
        fast, slow, alone = _rates(
            [
                (_grain_records(manager, threads), n // scale),
                (_grain_records(slow_manager, threads), 4_000 // scale),
                (_grain_records(fixed, threads), n // scale),
            ],
            repeats,
        )
        rows.append((f"grain .map, create_metadata + rng_key{label}", fast, slow))
        # Grain alone: the ratio no manager can pass with these read options.
        rows.append((f"  Grain alone (a fixed key per record){label}", alone, slow))
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
    n = GRAIN_RECORDS // scale
    fast, slow, alone = _rates(
        [
            (_grain_batches(lambda ids: manager.create_batch_metadata(ids).rng_key), n),
            (_grain_batches(_vmap_fold_in()), n),
            (_grain_batches(lambda ids: fixed.key), n),
        ],
        repeats + 2,
    )
    rows.append(("grain .batch(256), create_batch_metadata", fast, slow))
    rows.append(("  Grain alone (a fixed key per batch)", alone, slow))
    return rows


class _Fixed:
    """Stands in for a manager that costs nothing: every record gets the same key."""

    def __init__(self, key: jax.Array) -> None:
        self.key = key
        self.record = RecordMetadata(index=0, record_key=0, rng_key=key)

    def create_metadata(self, record_key: int) -> RecordMetadata:
        return self.record


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
    rows.extend(_grain_rows(scale, repeats))

    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}, jax {jax.__version__}, "
        f"backend {jax.default_backend()}"
    )
    print(f"{'benchmark':52} {'datarax rec/s':>15} {'baseline rec/s':>16} {'ratio':>8}")
    for label, fast, slow in rows:
        print(f"{label:52} {fast:15,.0f} {slow:16,.0f} {fast / slow:7.2f}x")
    return rows


if __name__ == "__main__":
    main()
