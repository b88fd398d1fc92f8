"""The object-storage tests' training job: checkpoints to ``gs://`` or ``s3://`` and resumes.

Runs :func:`train_step` (``object_store_stream.py``) step after step; every
``--save-every`` steps an async ``ocp.CheckpointManager`` saves, in one Composite, the items
named by ``--items``: ``model`` (``StandardSave``), ``data`` (``MetadataManagerSave``),
``batch`` (``MetadataSave`` of the step's batch) and ``sharded`` (the same batch spread over
8 CPU devices). With ``--resume`` it restores the latest step first and writes
``restored <json>`` (what came back) and ``start STEP``. With ``--damage`` it then overwrites
one byte of each datarax item's ``process_0.jsonl`` (and of each other file of the sharded
item) in the bucket, restores, and writes ``damaged <item> <file>: <error>`` for each.
Writes ``saving STEP`` (then waits to be killed, with ``--announce-save``) and ``done``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

if "jax" in sys.modules:
    raise RuntimeError("run this script in a fresh process: it sets the device count")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
)
from datarax.core.metadata import Metadata

sys.path.insert(0, str(Path(__file__).parents[2]))  # the repository root: run as a script
from integration.workers.object_store_stream import (
    initial_state,
    metadata_log,
    shard,
    train_step,
)
from integration.workers.streams import log_step

ITEMS = ("model", "data", "batch", "sharded")


def save_args(items: list[str], model: Any, manager: Any, batch: Metadata) -> Any:
    """The Composite that saves ``items``."""
    make = {
        "model": lambda: ocp.args.StandardSave(model),
        "data": lambda: MetadataManagerSave(manager),
        "batch": lambda: MetadataSave(batch),
        "sharded": lambda: MetadataSave(shard(batch)),
    }
    return ocp.args.Composite(**{name: make[name]() for name in items})


def restore_args(items: list[str], model: Any, manager: Any, batch: Metadata) -> Any:
    """The Composite that restores ``items`` (``batch`` only gives the sharded target)."""
    make = {
        "model": lambda: ocp.args.StandardRestore(model),
        "data": lambda: MetadataManagerRestore(manager),
        "batch": lambda: MetadataRestore(),
        "sharded": lambda: MetadataRestore(shard(batch)),
    }
    return ocp.args.Composite(**{name: make[name]() for name in items})


def resume(mngr: ocp.CheckpointManager, items: list[str], model: Any, manager: Any) -> tuple:
    """Restores the latest step; writes what came back; returns the restored state."""
    step = mngr.latest_step()
    if step is None:
        raise SystemExit(f"no committed step under {mngr.directory}")
    template, _, _ = train_step(*initial_state(), 0)  # shapes and dtypes of a batch
    restored = mngr.restore(step, args=restore_args(items, model, manager, template))
    report: dict[str, Any] = {"step": step}
    for name in ("batch", "sharded"):
        if name in restored:
            report[name] = metadata_log(restored[name])
    if "sharded" in restored:
        report["sharded_devices"] = len(restored["sharded"].index.sharding.device_set)
    if "model" in restored:
        model = restored["model"]
        report["model"] = np.asarray(model["w"]).tolist()
    print("restored " + json.dumps(report), flush=True)
    manager = restored["data"]  # a new manager (or the template, restored in place)
    return step + 1, model, manager


def damage(mngr: ocp.CheckpointManager, items: list[str], model: Any, manager: Any) -> None:
    """Damages one byte of each datarax item's files in turn; each must fail to restore."""
    step = mngr.latest_step()
    template, _, _ = train_step(*initial_state(), 0)
    for item in [name for name in items if name != "model"]:
        folder = epath.Path(mngr.directory) / str(step) / item
        targets = [folder / "process_0.jsonl"]
        if item == "sharded":  # also its other files (its arrays' data, a manifest), if any
            ours = [p for p in _files(folder) if p.name != "commit_success.txt"]
            targets.extend(sorted(p for p in ours if p.name != "process_0.jsonl"))
        for path in targets:
            data = path.read_bytes()
            middle = len(data) // 2
            path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
            try:
                mngr.restore(step, args=restore_args([item], model, manager, template))
            except MetadataCheckpointError as e:
                print(f"damaged {item} {path.name}: {e}", flush=True)
            else:
                print(f"damaged {item} {path.name}: restored without an error", flush=True)
            path.write_bytes(data)
    mngr.restore(step, args=restore_args(items, model, manager, template))
    print("repaired", flush=True)


def _files(folder: epath.Path) -> list[epath.Path]:
    pending, files = [folder], []
    while pending:
        for path in pending.pop().iterdir():
            (pending if path.is_dir() else files).append(path)
    return files


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--directory", required=True, help="gs://bucket/run or s3://bucket/run")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--items", default=",".join(ITEMS))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save-every", type=int, default=3)
    p.add_argument("--announce-save", type=int, default=-1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--commit-file", action="store_true", help="CommitFileTemporaryPath")
    p.add_argument("--damage", action="store_true")
    a = p.parse_args()
    items = a.items.split(",")
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
    if a.commit_file:
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True,
            temporary_path_class=ocp.path.atomicity.CommitFileTemporaryPath,
        )
    manager, model = initial_state()
    start = 0
    with ocp.CheckpointManager(a.directory, options=options) as mngr:
        if a.resume:
            start, model, manager = resume(mngr, items, model, manager)
        print(f"start {start}", flush=True)
        with open(a.log, "a") as log_file:
            for step in range(start, a.steps):
                batch, model, log = train_step(manager, model, step)
                composite = lambda: save_args(items, model, manager, batch)  # noqa: B023, E731
                log_step(log_file, log, mngr, step, a.save_every, a.announce_save, composite)
        mngr.wait_until_finished()
        if a.damage:
            damage(mngr, items, model, manager)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
