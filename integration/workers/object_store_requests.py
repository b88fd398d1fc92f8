"""Counts the object-store requests that saving and restoring each datarax item make, beside
``ocp.args.JsonSave``/``JsonRestore`` of the same document.

For each item (``data``: a ``MetadataManager``; ``batch``: a batch ``Metadata`` on the
host; ``sharded``: the same batch over 8 devices, ``gs://`` only) one ``CheckpointManager``
saves step 1 holding only that item, then a new ``CheckpointManager`` (as a fresh process
would) restores it; the same is done with ``JsonSave`` of the item's own
``process_0.jsonl`` document. Requests are read from the server's log between two marker
requests, so Orbax's own per-step requests count on both sides alike. Writes one JSON line
per measurement: ``{"item", "api", "op", "counts", "requests"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

if "jax" in sys.modules:
    raise RuntimeError("run this script in a fresh process: it sets the device count")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax
import orbax.checkpoint as ocp
from etils import epath

from datarax.checkpoint import (
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
)
from datarax.core.metadata import Metadata

sys.path.insert(0, str(Path(__file__).parents[2]))  # the repository root: run as a script
from integration.object_stores import Server, count
from integration.workers.object_store_stream import initial_state, shard, train_step


def measure(server: Server, item: str, api: str, op: str, action: Any) -> None:
    """Runs ``action()`` between two marks and writes the requests it made: all of them
    (``counts``) and those naming the item's directory or a file in it (``item_counts``;
    the rest is Orbax's work on the step, the same whatever the item)."""
    start = server.mark()
    action()
    requests = server.requests_between(start, server.mark())
    lines = [f"{r.method} {r.path}{'?' + r.query if r.query else ''} {r.status}" for r in requests]
    mine = [r for r, line in zip(requests, lines, strict=True) if _in_item(line, item)]
    record = {"item": item, "api": api, "op": op, "counts": count(requests),
              "item_counts": count(mine), "requests": lines}  # fmt: skip
    print(json.dumps(record), flush=True)


def _in_item(line: str, item: str) -> bool:
    # Object names are URL-quoted in paths (gs://) and queries; the item directory is
    # <directory>/1/<item>, the Composite's other items (`<item>_arrays`) included.
    return f"/1/{item}" in urllib.parse.unquote(line)


def round_trip(server: Server, directory: str, item: str, api: str, save: dict[str, Any],
               restore: dict[str, Any], options: ocp.CheckpointManagerOptions) -> None:  # fmt: skip
    """Measures the save of the ``save`` args and the restore with the ``restore`` args
    (dicts of Composite items) in a ``CheckpointManager`` at ``directory``."""
    with ocp.CheckpointManager(directory, options=options) as mngr:

        def save_step() -> None:
            mngr.save(1, args=ocp.args.Composite(**save))
            mngr.wait_until_finished()

        measure(server, item, api, "save", save_step)
    with ocp.CheckpointManager(directory, options=options) as mngr:
        measure(server, item, api, "restore",
                lambda: mngr.restore(1, args=ocp.args.Composite(**restore)))  # fmt: skip


def global_arrays(batch: Metadata) -> dict[str, jax.Array]:
    """The batch's array fields, its keys as key data."""
    arrays = {f: getattr(batch, f) for f in ("index", "epoch", "global_step", "batch_idx")}
    return {**arrays, "rng_key": jax.random.key_data(batch.rng_key)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--directory", required=True, help="gs://bucket/counts or s3://bucket/counts")
    p.add_argument("--server-url", required=True)
    p.add_argument("--server-log", type=Path, required=True)
    p.add_argument("--items", default="data,batch,sharded")
    a = p.parse_args()
    server = Server("server", [], int(a.server_url.rsplit(":", 1)[1]), a.server_log, "/")
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
    if a.directory.startswith("s3://"):
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True,
            temporary_path_class=ocp.path.atomicity.CommitFileTemporaryPath,
        )
    manager, model = initial_state()
    batch, _, _ = train_step(manager, model, 0)
    make = {
        "data": (lambda: MetadataManagerSave(manager), lambda: MetadataManagerRestore(manager)),
        "batch": (lambda: MetadataSave(batch), lambda: MetadataRestore()),
        "sharded": (lambda: MetadataSave(shard(batch)), lambda: MetadataRestore(shard(batch))),
    }
    for item in a.items.split(","):
        save, restore = make[item]
        ours = f"{a.directory}/{item}"
        round_trip(server, ours, item, "datarax", {item: save()}, {item: restore()}, options)
        document = (epath.Path(ours) / "1" / item / "process_0.jsonl").read_bytes()
        doc = json.loads(document.split(b"\n", 1)[1])
        saves = {item: ocp.args.JsonSave(doc)}
        restores = {item: ocp.args.JsonRestore()}
        if item == "sharded":  # Orbax's own way for its global arrays: StandardSave
            arrays = global_arrays(shard(batch))
            saves[item + "_arrays"] = ocp.args.StandardSave(arrays)
            restores[item + "_arrays"] = ocp.args.StandardRestore(arrays)
        round_trip(server, f"{ours}-json", item, "json", saves, restores, options)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
