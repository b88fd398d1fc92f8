"""One of two ``jax.distributed`` CPU processes run by ``test_checkpoint_orbax_v1.py``.

Both save, with Orbax v1, each its own ``MetadataManager`` and together a global batch's
``Metadata`` whose arrays are sharded over the two processes; then both load it back. The
item manifest of the global arrays is written by the primary process only once both
processes committed: it must list the array files of both. Prints ``OK`` when every check
passed.
"""

from __future__ import annotations

import pathlib
import sys

import jax


def main(coordinator: str, process_id: int, root: pathlib.Path) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
    )
    import numpy as np
    import orbax.checkpoint.experimental.v1 as ocp_v1
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from checkpoint_oracle import manager_state, next_records

    from datarax.checkpoint.integrity import read_document
    from datarax.core.metadata import Metadata, MetadataManager

    manager = MetadataManager(rngs=nnx.Rngs(metadata=10 + process_id), shard_id=process_id)
    next_records(manager, 2 + process_id)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("p",)), PartitionSpec("p"))
    rows = np.arange(4, dtype=np.int32) + 100 * process_id
    index = jax.make_array_from_process_local_data(sharding, rows)
    batch = {"global": Metadata(index=index, global_step=7)}
    saved_state = manager_state(manager)
    manifest_name = "item_manifest.jsonl"  # written by the handlers' finalize: every file

    ocp_v1.save_checkpointables(root / "1", {"data": manager, "batch": batch})

    names = sorted(p.name for p in (root / "1" / "data").iterdir())
    assert names == ["item_manifest.jsonl", "process_0.jsonl", "process_1.jsonl"], names
    manifest = read_document(root / "1" / "batch" / manifest_name)
    listed = sorted(manifest["files"])
    for i in (0, 1):
        assert any(f"ocdbt.process_{i}" in name for name in listed), listed

    loaded = ocp_v1.load_checkpointables(root / "1")
    assert manager_state(loaded["data"]) == saved_state
    assert next_records(loaded["data"], 4) == next_records(manager, 4)
    got = loaded["batch"]["global"].index
    assert got.sharding == sharding, got.sharding
    local = np.concatenate([np.asarray(s.data) for s in got.addressable_shards])
    np.testing.assert_array_equal(local, rows)
    assert loaded["batch"]["global"].global_step == 7

    # training.Checkpointer runs v1 handlers under Orbax's v0 CheckpointManager: each save
    # has its own barriers, and the manifest of each step lists both processes' files.
    with ocp_v1.training.Checkpointer(root / "run") as ckptr:
        for step in range(3):
            next_records(manager, 1)
            ckptr.save_checkpointables(step, {"data": manager, "batch": batch})
        saved_state = manager_state(manager)
    with ocp_v1.training.Checkpointer(root / "run") as ckptr:
        assert ckptr.latest.step == 2, ckptr.latest
        resumed = ckptr.load_checkpointables()["data"]
    assert manager_state(resumed) == saved_state
    for step in range(3):
        listed = read_document(root / "run" / str(step) / "data" / manifest_name)
        assert "process_1.jsonl" in str(listed), listed
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]))
