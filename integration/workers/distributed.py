"""One process of a ``jax.distributed`` job on CPU that checkpoints its shard's stream.

Each process owns a ``MetadataManager`` (``shard_id=jax.process_index()``) and a slice of
a global array sharded over all processes (the "model"). Every step it takes its shard's
next batch of record metadata, adds one to the array and sums it across processes (a gloo
all-reduce). One ``CheckpointManager`` checkpoints the array, the managers of all
processes, and the global batch's ``Metadata`` (its leaves global arrays sharded over the
processes, each holding its own shard's records) together. On resume, each process prints
``batch {...}``: its shard of the restored global batch, and whether it came back with the
target's sharding. Writes ``start STEP``, ``saving STEP`` (then waits to be killed, with
``--announce-save``), ``done``, or ``MetadataCheckpointError: ...`` (exit status 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parents[2]))  # the repository root: run as a script
from integration.workers.streams import log_step, next_batch, record_log, shard_manager


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--coordinator", required=True)
    p.add_argument("--num-processes", type=int, required=True)
    p.add_argument("--process-id", type=int, required=True)
    p.add_argument("--checkpoints", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save-every", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--epoch-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--announce-save", type=int)
    args = p.parse_args()

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from datarax.checkpoint import (
        MetadataCheckpointError,
        MetadataManagerRestore,
        MetadataManagerSave,
        MetadataRestore,
        MetadataSave,
    )
    from datarax.core.metadata import Metadata

    n = jax.process_count()
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("p",)), PartitionSpec("p"))
    initial = np.arange(4 * n, dtype=np.float32)
    weights = jax.make_array_from_callback(initial.shape, sharding, lambda i: initial[i])
    step_fn = jax.jit(lambda w: (w + 1, jnp.sum(w + 1)))  # the sum is a cross-process reduce

    def global_batch(index, global_step, key_data) -> Metadata:
        """The global batch's metadata; each process supplies its own shard's rows."""

        def glob(rows):
            return jax.make_array_from_process_local_data(sharding, np.asarray(rows))

        return Metadata(
            index=glob(index), global_step=glob(global_step), rng_key=glob(key_data), shard_id=0
        )

    zeros = np.zeros(args.batch, np.int32)
    like_saved = global_batch(zeros, zeros, np.zeros((args.batch, 2), np.uint32))
    manager = shard_manager(args.seed, jax.process_index())
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    mngr = ocp.CheckpointManager(args.checkpoints, options=options)

    start = 0
    if args.resume and (latest := mngr.latest_step()) is not None:
        try:
            restored = mngr.restore(
                latest,
                args=ocp.args.Composite(
                    model=ocp.args.StandardRestore({"w": weights}),
                    data=MetadataManagerRestore(manager),
                    batch=MetadataRestore(like_saved),
                ),
            )
        except MetadataCheckpointError as error:
            print(f"MetadataCheckpointError: {error}", flush=True)
            os._exit(3)  # the other processes fail alike: no shutdown barrier to wait at
        weights = restored["model"]["w"]
        manager = restored["data"]
        start = latest
        batch = restored["batch"]
        mine = {
            name: np.asarray(getattr(batch, name).addressable_data(0)).tolist()
            for name in ("index", "global_step", "rng_key")
        }
        mine["shard_id"] = batch.shard_id
        mine["sharding"] = all(
            getattr(batch, name).sharding == sharding for name in ("index", "rng_key")
        )
        print(f"batch {json.dumps(mine)}", flush=True)
    print(f"start {start}", flush=True)

    with args.log.open("w") as log_file:
        for step in range(start, args.steps):
            records = next_batch(manager, step, args.batch, args.epoch_steps)
            weights, total = step_fn(weights)
            log = {"step": step, "total": float(total.addressable_data(0)), **record_log(records)}
            key_data = jax.random.key_data(records.rng_key)
            batch = global_batch(records.index, records.global_step, key_data)
            composite = lambda weights=weights, batch=batch: ocp.args.Composite(  # noqa: E731
                model=ocp.args.StandardSave({"w": weights}),
                data=MetadataManagerSave(manager),
                batch=MetadataSave(batch),
            )
            log_step(log_file, log, mngr, step + 1, args.save_every, args.announce_save, composite)
    mngr.wait_until_finished()
    mngr.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
