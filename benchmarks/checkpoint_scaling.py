"""Checkpoint cost as the work grows (issue 9): a host batch of N = 256 to 1M records
(``--sizes``), a batch sharded over every device (``--sharded``), and a manager with 1 to
1,000 streams and a ``source_info`` of 64k entries (``--extra``), each beside Orbax's
``JsonSave`` and ``StandardSave``. Run through ``python -m benchmarks.checkpoint_bench``."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from benchmarks._items import (
    Variant,
    batch_fields,
    batch_metadata,
    disk_bytes,
    item_costs,
    machine,
    manager_fields,
)
from datarax.checkpoint import (
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
)
from datarax.core.metadata import Metadata, MetadataManager

SIZES = {256: 30, 4096: 20, 65536: 10, 1 << 20: 12}
"""Host-batch sizes of the size sweep, and how many timed repetitions each gets."""


def _size_sweep(root: str, scale: float) -> dict[int, dict[str, tuple[float, float, int]]]:
    """Save+wait, restore (ms, medians) and bytes on disk of a host batch of N records
    (what ``create_batch_metadata`` returns, as a ``Metadata``) per variant, for each N."""
    out = {}
    for n, repeats in SIZES.items():
        batch = batch_metadata(n)
        as_json, arrays = batch_fields(batch)
        variants = [
            Variant(f"n{n} datarax", root, lambda b=batch: MetadataSave(b), MetadataRestore),
            Variant(f"n{n} JsonSave", root, lambda j=as_json: ocp.args.JsonSave(j),
                     ocp.args.JsonRestore),
            Variant(f"n{n} StandardSave", root, lambda a=arrays: ocp.args.StandardSave(a),
                     ocp.args.StandardRestore),
        ]  # fmt: skip
        for v in variants:  # warm-up
            v.save(record=False)
            v.restore(record=False)
        for rep in range(max(2, int(repeats * scale))):  # interleaved, save then restore
            for v in variants:
                if rep >= 3 and n >= 1 << 20 and v.label.endswith("JsonSave"):
                    continue  # seconds per run at 1M: three are enough to place it
                v.save()
                v.restore()
        out[n] = {
            v.label.split(" ", 1)[1]: (
                statistics.median(v.save_s) * 1e3,
                statistics.median(v.restore_s) * 1e3,
                disk_bytes(v),
            )
            for v in variants
        }
        for v in variants:
            v.close()
            shutil.rmtree(v.dir, ignore_errors=True)
    return out


def _batch_blocking(n: int, steps: int, interval: float, root: str) -> dict[str, float]:
    """Median extra ms that ``save()`` blocks when a host batch of ``n`` records is added
    to an async save of 8 MiB of model state: as ``MetadataSave`` and as ``StandardSave``
    of the same arrays (paired with the state saved alone, the three taking turns)."""
    key = jax.random.key(0)
    params = {f"w{i}": jax.random.normal(jax.random.fold_in(key, i), (512, 1024)) for i in range(4)}
    batch = batch_metadata(n)
    _, arrays = batch_fields(batch)
    extras = {
        "alone": lambda: {},
        "MetadataSave": lambda: {"data": MetadataSave(batch)},
        "StandardSave": lambda: {"data": ocp.args.StandardSave(arrays)},
    }
    managers = {k: ocp.CheckpointManager(os.path.join(root, f"block{n}_{k}")) for k in extras}
    times: dict[str, list[float]] = {k: [] for k in extras}
    for step in range(steps + 2):
        for label, mngr in managers.items():
            time.sleep(interval)  # the train step
            mngr.wait_until_finished()
            params = jax.block_until_ready(jax.tree.map(lambda p: p + 1.0, params))
            start = time.perf_counter()
            mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(params),
                                                    **extras[label]()))  # fmt: skip
            if step >= 2:
                times[label].append(time.perf_counter() - start)
    for mngr in managers.values():
        mngr.wait_until_finished()
        mngr.close()
    alone = times["alone"]
    return {
        label: statistics.median([t - a for t, a in zip(times[label], alone, strict=True)]) * 1e3
        for label in ("MetadataSave", "StandardSave")
    }


STREAMS = (1, 8, 64, 1000)
"""Stream counts of the ``--extra`` manager rows."""


def _streams_manager(streams: int) -> MetadataManager:
    rngs = nnx.Rngs(**{f"s{i}": i for i in range(streams)})
    manager = MetadataManager(rngs=rngs, track_batches=True, shard_id=0)
    for i in range(10):
        manager.create_metadata(record_key=i)
    return manager


def _source_info_metadata(entries: int) -> tuple[Metadata, dict[str, Any]]:
    info = {f"shard_{i:06d}": f"gs://bucket/train/{i:06d}.rec" for i in range(entries)}
    return Metadata(index=0, epoch=0, global_step=0, source_info=info), info


def _extra_rows(repeats: int, root: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Issue 9's extra rows: a manager item with many streams, and a ``Metadata`` whose
    ``source_info`` has 64k entries, each beside ``JsonSave`` of the same
    fields (the goal is against ``JsonSave``/``JsonRestore``; no ``StandardSave`` here)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for streams in STREAMS:
        manager = _streams_manager(streams)
        as_json, _ = manager_fields(manager)
        out[f"manager, {streams} streams"] = item_costs(
            f"s{streams}", (lambda m=manager: MetadataManagerSave(m), MetadataManagerRestore),
            as_json, None, repeats, root,
        )  # fmt: skip
    meta, info = _source_info_metadata(1 << 16)
    out["source_info, 65,536 entries"] = item_costs(
        "info", (lambda: MetadataSave(meta), MetadataRestore),
        {"source_info": info}, None, max(3, repeats // 5), root,
    )  # fmt: skip
    return out


SHARDED_SIZES = {4096: 12, 65536: 10, 1 << 20: 8, 1 << 23: 4}
"""Sizes of the ``--sharded`` sweep and their timed repetitions (``JsonSave`` only up to 1M)."""


def _sharded_metadata(n: int) -> tuple[Metadata, dict[str, Any]]:
    """A batch of ``n`` records, every leaf sharded over all devices along its first axis,
    and the same arrays as a dict (the key as its key data) for ``StandardSave``."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("x",)), PartitionSpec("x"))
    put = lambda a: jax.device_put(a, sharding)  # noqa: E731
    counts = jnp.arange(n, dtype=jnp.int32)
    m = Metadata(
        index=put(counts), epoch=put(jnp.zeros(n, jnp.int32)), global_step=put(counts // 256),
        batch_idx=put(counts // 256), rng_key=put(jax.random.split(jax.random.key(0), n)),
    )  # fmt: skip
    arrays = {
        "index": m.index, "epoch": m.epoch, "global_step": m.global_step,
        "batch_idx": m.batch_idx, "rng_key": put(jax.random.key_data(m.rng_key)),
    }  # fmt: skip
    return m, arrays


def _sharded_sweep(root: str, scale: float) -> dict[int, dict[str, tuple[float, float, int]]]:
    """As :func:`_size_sweep`, for a batch sharded over every device (run with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` on a CPU); restores are given
    the saved arrays as targets, so that each restores with the saved sharding."""
    out = {}
    for n, repeats in SHARDED_SIZES.items():
        m, arrays = _sharded_metadata(n)
        variants = [
            Variant(f"s{n} datarax", root, lambda m=m: MetadataSave(m),
                     lambda m=m: MetadataRestore(m)),
            Variant(f"s{n} StandardSave", root, lambda a=arrays: ocp.args.StandardSave(a),
                     lambda a=arrays: ocp.args.StandardRestore(a)),
        ]  # fmt: skip
        if n <= 1 << 20:
            as_json = {k: np.asarray(v).tolist() for k, v in arrays.items()}
            json_save = lambda j=as_json: ocp.args.JsonSave(j)  # noqa: E731
            variants.append(Variant(f"s{n} JsonSave", root, json_save, ocp.args.JsonRestore))
        for v in variants:  # warm-up
            v.save(record=False)
            v.restore(record=False)
        for rep in range(max(2, int(repeats * scale))):
            for v in variants:
                if rep >= 3 and n >= 1 << 20 and v.label.endswith("JsonSave"):
                    continue
                v.save()
                v.restore()
        out[n] = {
            v.label.split(" ", 1)[1]: (
                statistics.median(v.save_s) * 1e3, statistics.median(v.restore_s) * 1e3,
                disk_bytes(v),
            )
            for v in variants
        }  # fmt: skip
        for v in variants:
            v.close()
            shutil.rmtree(v.dir, ignore_errors=True)
    return out


def _print_sweep(
    sweep: dict[int, dict[str, tuple[float, float, int]]],
    title: str = "host batch (create_batch_metadata as a Metadata)",
) -> None:
    print(f"{title}, medians (ms) and bytes on disk:")
    print(f"{'N':>8} {'variant':14} {'save+wait':>10} {'restore':>10} {'bytes':>11}")
    for n, rows in sweep.items():
        for variant, (save, restore, size) in rows.items():
            print(f"{n:8} {variant:14} {save:10.2f} {restore:10.2f} {size:11}")
    print("ratios: datarax / the faster of JsonSave and StandardSave (goal <= 1.0); bytes /")
    print("StandardSave's (goal <= 1.1):")
    for n, rows in sweep.items():
        d, s = rows["datarax"], rows["StandardSave"]
        j = rows.get("JsonSave", s)
        print(
            f"  N={n:<8} save {d[0] / min(j[0], s[0]):.2f}  restore {d[1] / min(j[1], s[1]):.2f}"
            f"  (vs StandardSave: save {d[0] / s[0]:.2f}, restore {d[1] / s[1]:.2f})"
            f"  bytes {d[2] / s[2]:.2f}"
        )


def run_sharded(quick: bool = False) -> dict[str, Any]:
    """The ``--sharded`` run: a batch sharded over every device, printed and returned."""
    root = tempfile.mkdtemp(prefix="datarax-ckpt-bench-")
    try:
        sweep = _sharded_sweep(root, 0.5 if quick else 1.0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {machine()}, {jax.device_count()} devices")
    _print_sweep(sweep, "batch sharded over every device (JsonSave up to 1M only)")
    return {"sharded": sweep}


def run_extra(quick: bool = False) -> dict[str, Any]:
    """The ``--extra`` run: 1 to 1,000 streams and a 64k-entry ``source_info``."""
    root = tempfile.mkdtemp(prefix="datarax-ckpt-bench-")
    try:
        extra = _extra_rows(6 if quick else 30, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"{'item':30} {'variant':14} {'save+wait':>10} {'restore':>10}   (median ms)")
    for item, rows in extra.items():
        for variant, (save, restore) in rows.items():
            print(f"{item:30} {variant:14} {save:10.2f} {restore:10.2f}")
        d, j = rows["datarax"], rows["JsonSave"]
        print(f"  ratio to Json: save {d[0] / j[0]:.2f}  restore {d[1] / j[1]:.2f}  (goal <= 1.5)")
    return {"extra": extra}


def run_sizes(quick: bool = False) -> dict[str, Any]:
    """The ``--sizes`` run: the host-batch sweep and the blocking time beside a model."""
    root = tempfile.mkdtemp(prefix="datarax-ckpt-bench-")
    try:
        sweep = _size_sweep(root, 0.5 if quick else 1.0)
        blocking = {n: _batch_blocking(n, 8 if quick else 30, 0.05, root) for n in (4096, 1 << 20)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {machine()}")
    _print_sweep(sweep)
    print("extra ms save() blocks beside 8 MiB of model state (median, paired):")
    for n, extra in blocking.items():
        print(
            f"  N={n:<8} MetadataSave {extra['MetadataSave']:6.2f}  StandardSave of the "
            f"same arrays {extra['StandardSave']:6.2f}  (goal: <= StandardSave's, < 2 ms "
            "up to 4k)"
        )
    return {"sizes": sweep, "blocking": blocking}
