"""Run by ``test_checkpoint_sharded.py`` in a fresh process with 8 CPU devices.

A batched Metadata whose leaves are sharded over 8 devices goes through Orbax's array
serialization and restores into targets with other shardings; every file of the item,
damaged, is an error naming it. Prints ``OK`` when every check passed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

if "jax" in sys.modules:
    raise RuntimeError("run this script in a fresh process: it sets the device count")
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from checkpoint_oracle import assert_exact

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataCheckpointHandler,
    MetadataRestore,
    MetadataSave,
)
from datarax.core.metadata import Metadata

B = 16


def main() -> None:
    devices = jax.devices()
    assert len(devices) == 8, devices
    saved_sharding = NamedSharding(Mesh(np.array(devices), ("x",)), P("x"))
    mesh2 = Mesh(np.array(devices).reshape(2, 4), ("a", "b"))
    other = NamedSharding(mesh2, P(("a", "b")))
    rows = NamedSharding(mesh2, P("a"))

    encoded = np.zeros((B, 128), np.uint8)
    encoded[:, 0] = np.arange(97, 97 + B)
    item = Metadata(
        index=jax.device_put(jnp.arange(B, dtype=jnp.int32) + 1000, saved_sharding),
        epoch=jax.device_put(jnp.full(B, 3, jnp.int32), saved_sharding),
        global_step=77,
        batch_idx=np.arange(B, dtype=np.int32),
        rng_key=jax.device_put(jax.random.split(jax.random.key(42, impl="rbg"), B), saved_sharding),
        _encoded_key=jax.device_put(jnp.asarray(encoded), saved_sharding),
        source_info={"mesh": ("x", 8)},
    )
    for leaf in (item.index, item.rng_key, item._encoded_key):
        assert len(leaf.sharding.device_set) == 8

    # Targets: concrete arrays and ShapeDtypeStructs, all with other shardings.
    target = item.replace(
        epoch=jax.device_put(jnp.zeros(B, jnp.int32), rows),
        rng_key=jax.device_put(jax.random.split(jax.random.key(0, impl="rbg"), B), rows),
    )
    target = jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=other)
            if x is item.index or x is item._encoded_key
            else x
        ),
        target,
    )

    with tempfile.TemporaryDirectory() as tmp:
        with ocp.CheckpointManager(tmp) as mngr:
            mngr.save(1, args=ocp.args.Composite(meta=MetadataSave(item)))
            mngr.wait_until_finished()
            restored = mngr.restore(1, args=ocp.args.Composite(meta=MetadataRestore(target)))
            rebuilt = mngr.restore(1, args=ocp.args.Composite(meta=MetadataRestore()))
        restored, rebuilt = restored["meta"], rebuilt["meta"]

        assert_exact(restored, item)
        assert restored.index.sharding == other, restored.index.sharding
        assert restored._encoded_key.sharding == other
        assert restored.epoch.sharding == rows
        assert restored.rng_key.sharding == rows, restored.rng_key.sharding
        assert type(restored.batch_idx) is np.ndarray
        assert_exact(rebuilt, item, check_sharding=True)
        print("restored into the target's shardings")

        item_dir = pathlib.Path(tmp) / "1" / "meta"
        files = sorted(
            p.relative_to(item_dir)
            for p in item_dir.rglob("*")
            if p.is_file() and p.name != "commit_success.txt"  # Orbax's marker, not ours
        )
        assert any(f.name == "item_manifest.jsonl" for f in files), files
        assert len(files) > 5, files
        for rel in files:
            for how in ("delete", "truncate", "flip"):
                _check_damage(item_dir, rel, how)
        print(f"{len(files)} files x 3 damages: each an error naming the file")
        _check_mixed_saves(pathlib.Path(tmp), item)
    print("OK")


def _check_mixed_saves(root: pathlib.Path, item: Metadata) -> None:
    """A second save of other values at step 2; files of steps 1 and 2 mixed in one item
    (the process document of one, every other file of the other) are an error naming the
    document, whichever way round."""
    other = item.replace(index=item.index + 1, global_step=78)
    with ocp.CheckpointManager(root) as mngr:
        mngr.save(2, args=ocp.args.Composite(meta=MetadataSave(other)))
        mngr.wait_until_finished()
    for doc_from, rest_from in ((1, 2), (2, 1)):
        with tempfile.TemporaryDirectory() as tmp:
            mixed = pathlib.Path(tmp) / str(rest_from) / "meta"
            shutil.copytree(root / str(rest_from) / "meta", mixed)
            shutil.copy(root / str(doc_from) / "meta" / "process_0.jsonl", mixed)
            try:
                restored = MetadataCheckpointHandler().restore(mixed, MetadataRestore())
            except MetadataCheckpointError as e:
                assert "process_0.jsonl" in str(e), e
            else:
                raise AssertionError(
                    f"document of step {doc_from} with arrays of step {rest_from} restored "
                    f"without an error: index {restored.index}, global_step "
                    f"{restored.global_step}"
                )
    print("documents and arrays of two saves mixed: each an error naming the document")


def _check_damage(item_dir: pathlib.Path, rel: pathlib.Path, how: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "1" / "meta"  # the same step as the original
        shutil.copytree(item_dir, copy)
        path = copy / rel
        data = path.read_bytes()
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            path.write_bytes(data[: len(data) // 2])
        else:
            i = len(data) // 2
            path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :])
        try:
            MetadataCheckpointHandler().restore(copy, MetadataRestore())
        except MetadataCheckpointError as e:
            assert rel.name in str(e), (rel, how, e)
        else:
            raise AssertionError(f"{rel} ({how}): restored without an error")


if __name__ == "__main__":
    main()
