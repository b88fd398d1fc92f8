"""What the checkpoint benchmarks share: the items measured, their baselines' fields, and a
variant (one item kind in its own ``CheckpointManager``) timed in turn with the others."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from datarax.checkpoint.manager_codec import encode_manager
from datarax.core._position import read_position
from datarax.core.metadata import Metadata, MetadataManager


def manager_with_records() -> MetadataManager:
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0, params=1), track_batches=True, shard_id=0)
    for i in range(100):
        manager.create_metadata(record_key=i)
    manager.create_batch_metadata(list(range(1000)))
    manager.next_batch()
    return manager


def manager_fields(manager: MetadataManager) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manager item's fields as a JSON dict and as a pytree of NumPy arrays."""
    doc = encode_manager(read_position(manager))
    as_json = {
        "state": doc["state"], "shard_id": doc["shard_id"],
        "track_batches": doc["track_batches"], "rngs": doc["rngs"],
    }  # fmt: skip
    as_arrays = {k: np.asarray(v, np.int64) for k, v in doc["state"].items() if v is not None}
    as_arrays["shard_id"] = np.asarray(doc["shard_id"], np.int64)
    as_arrays["track_batches"] = np.asarray(doc["track_batches"])
    for name, s in doc["rngs"].items():
        as_arrays[f"{name}_key"] = np.asarray(s["key_data"], np.uint32)
        as_arrays[f"{name}_count"] = np.asarray(s["count"][0], np.uint32)
    return as_json, as_arrays


def batch_metadata(n: int) -> Metadata:
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0), track_batches=True)
    b = manager.create_batch_metadata([f"train/{i:06d}" for i in range(n)])
    return Metadata(
        index=b.index, epoch=b.epoch, global_step=b.global_step, batch_idx=b.batch_idx,
        rng_key=b.rng_key, source_info={"split": "train", "files": ("a.rec", "b.rec")},
    )  # fmt: skip


def batch_fields(m: Metadata) -> tuple[dict[str, Any], dict[str, Any]]:
    arrays = {
        "index": np.asarray(m.index), "epoch": np.asarray(m.epoch),
        "global_step": np.asarray(m.global_step), "batch_idx": np.asarray(m.batch_idx),
        "rng_key": np.asarray(jax.random.key_data(m.rng_key)),
    }  # fmt: skip
    as_json = {k: v.tolist() for k, v in arrays.items()}
    as_json["source_info"] = {"split": "train", "files": ["a.rec", "b.rec"]}
    return as_json, arrays


class Variant:
    """One item kind in its own CheckpointManager and directory."""

    def __init__(self, label: str, root: str, save: Callable[[], Any], restore: Callable[[], Any]):
        self.label = label
        self.dir = os.path.join(root, label.replace(" ", "_"))
        self.mngr = ocp.CheckpointManager(self.dir)
        self.save_args, self.restore_args = save, restore
        self.step = 0
        self.save_s: list[float] = []
        self.restore_s: list[float] = []

    def save(self, record: bool = True) -> None:
        self.step += 1
        start = time.perf_counter()
        self.mngr.save(self.step, args=ocp.args.Composite(item=self.save_args()))
        self.mngr.wait_until_finished()
        if record:
            self.save_s.append(time.perf_counter() - start)

    def restore(self, record: bool = True) -> None:
        start = time.perf_counter()
        self.mngr.restore(self.step, args=ocp.args.Composite(item=self.restore_args()))
        if record:
            self.restore_s.append(time.perf_counter() - start)

    def close(self) -> None:
        self.mngr.close()


def item_costs(
    name: str, datarax: tuple[Callable[[], Any], Callable[[], Any]], as_json: Any, arrays: Any,
    repeats: int, root: str,
) -> dict[str, tuple[float, float]]:  # fmt: skip
    variants = [
        Variant(f"{name} datarax", root, *datarax),
        Variant(f"{name} JsonSave", root, lambda: ocp.args.JsonSave(as_json), ocp.args.JsonRestore),
    ]
    if arrays is not None:
        variants.append(Variant(
            f"{name} StandardSave", root,
            lambda: ocp.args.StandardSave(arrays), ocp.args.StandardRestore,
        ))  # fmt: skip
    for _ in range(3):  # warm-up: imports, compilation, first directories
        for v in variants:
            v.save(record=False)
            v.restore(record=False)
    # Interleaved one operation at a time, so that load on the machine falls on all alike.
    for _ in range(repeats):
        for v in variants:
            v.save()
    for _ in range(repeats):
        for v in variants:
            v.restore()
    out = {}
    for v in variants:
        out[v.label.split(" ", 1)[1]] = (
            statistics.median(v.save_s) * 1e3,
            statistics.median(v.restore_s) * 1e3,
        )
        v.close()
    return out


def disk_bytes(variant: Variant) -> int:
    step = os.path.join(variant.dir, str(variant.step), "item")
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(step)
        for name in names
    )


def machine() -> str:
    lscpu = ""
    with contextlib.suppress(OSError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), platform.processor() or "cpu")  # fmt: skip
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.machine()}, python "
        f"{platform.python_version()}, jax {jax.__version__}, orbax-checkpoint "
        f"{ocp.__version__}, backend {jax.default_backend()}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
