"""Run by ``test_checkpoint_sharded.py`` in a fresh process with 8 CPU devices (``main``)
or 4 (``other_devices``).

A batched Metadata whose leaves are sharded over the 8 devices of this one process is
written like host arrays, with each leaf's sharding, and restores into targets with other
shardings, or without one onto the saved shardings; every file of the item, damaged, is an
error naming it. The version 2 fixtures of a sharded batch restore exactly: the one whose
arrays went through Orbax (its files listed with their sha256) and the one with shardings
in its document; so do they with 4 devices and a target, and without a target the second
is an error naming the missing devices. Prints ``OK`` when every check passed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

if "jax" in sys.modules:
    raise RuntimeError("run this script in a fresh process: it sets the device count")
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + (
    "4" if sys.argv[1:] == ["other_devices"] else "8"
)
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
from datarax.checkpoint.arrays import progression
from datarax.checkpoint.shardings import FillBlocks
from datarax.core.metadata import Metadata

B = 16
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "checkpoint_v2_sharded" / "5"


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
        # Held whole by this process: no Orbax files, the shardings are in the document,
        # which is the whole item (no manifest).
        assert _files(item_dir) == ["process_0.jsonl"]
        assert (item_dir / "process_0.jsonl").read_text().count('"sharding"') == 4
        _check_every_damage(item_dir)
        _check_mixed_saves(pathlib.Path(tmp), item)
    _check_large_batch(saved_sharding)
    _check_fills_made_on_each_device(mesh2)
    _check_fixtures()
    print("OK")


FILLS = [  # dtype, shape, fill: wrapping, repeating, runs across shard edges, constants
    ("int8", (64, 40), [-100, 3, 7]), ("uint8", (4096,), [250, 1]),
    ("int16", (8, 4, 100), [32000, 999, 3]), ("uint16", (2048,), [7, 0]),
    ("int32", (16, 128), [2**31 - 5, 1, 256]), ("uint32", (800,), [2**32 - 2, 2**31 + 1, 5]),
]  # fmt: skip


def _check_fills_made_on_each_device(mesh: Mesh) -> None:
    """A fill restored onto a sharding is made device by device: bit for bit the array
    ``progression`` makes whole, whatever the split."""
    specs = [P(("a", "b")), P("a", "b"), P(None, "b"), P("b", None), P()]
    for dtype, shape, fill in FILLS:
        expected = progression(*fill[:2], shape, np.dtype(dtype), *fill[2:])
        entry = {"container": "jax", "dtype": dtype, "shape": list(shape), "fill": fill}
        for spec in specs[: len(shape) + 1] if len(shape) > 1 else specs[:1] + specs[-1:]:
            sharding = NamedSharding(mesh, spec)
            value = jax.make_array_from_callback(
                shape, sharding, FillBlocks(entry, "x").__getitem__
            )
            np.testing.assert_array_equal(np.asarray(value), expected)
            assert np.asarray(value).dtype == expected.dtype and value.sharding == sharding
        np.testing.assert_array_equal(np.asarray(FillBlocks(entry, "x")), expected)
    print(f"{len(FILLS)} fills made on each device, bit for bit")


def _files(item_dir: pathlib.Path) -> list[str]:
    return sorted(
        str(p.relative_to(item_dir))
        for p in item_dir.rglob("*")
        if p.is_file() and p.name != "commit_success.txt"  # Orbax's marker, not ours
    )


def _check_every_damage(item_dir: pathlib.Path) -> None:
    files = _files(item_dir)
    for rel in files:
        for how in ("delete", "truncate", "flip"):
            _check_damage(item_dir, pathlib.Path(rel), how)
    print(f"{item_dir.name}: {len(files)} files x 3 damages: each an error naming the file")


def _check_large_batch(sharding: NamedSharding) -> None:
    """65,536 records: the arrays go to process_0.bin (global_step as a fill of three
    numbers), restore bit for bit, and any damage to any file is an error."""
    n = 1 << 16  # fills of this size are made device by device
    order = np.arange(n, dtype=np.int32) * 7919 % n
    item = Metadata(
        index=jax.device_put(jnp.asarray(order), sharding),
        epoch=jax.device_put(jnp.zeros(n, jnp.int32), sharding),
        global_step=jax.device_put(jnp.arange(n, dtype=jnp.int32) // 256 + 9, sharding),
        rng_key=jax.device_put(jax.random.split(jax.random.key(5), n), sharding),
    )
    with tempfile.TemporaryDirectory() as tmp:
        with ocp.CheckpointManager(tmp) as mngr:
            mngr.save(1, args=ocp.args.Composite(meta=MetadataSave(item)))
            mngr.wait_until_finished()
            restored = mngr.restore(1, args=ocp.args.Composite(meta=MetadataRestore()))
        assert_exact(restored["meta"], item, check_sharding=True)
        item_dir = pathlib.Path(tmp) / "1" / "meta"
        assert _files(item_dir) == ["process_0.bin", "process_0.jsonl"]
        doc = (item_dir / "process_0.jsonl").read_text()
        assert '"fill":[9,1,256]' in doc and '"fill":[0,0]' in doc, doc[:2000]
        _check_every_damage(item_dir)


def _fixture_batch(n: int, devices: list[Any]) -> Metadata:
    """The values ``make_checkpoint_v2_sharded.py`` saved, spelled out, on ``devices``."""
    rows = NamedSharding(Mesh(np.array(devices), ("x",)), P("x"))
    grid = NamedSharding(Mesh(np.array(devices).reshape(2, -1), ("a", "b")), P(("a", "b"), None))
    order = np.arange(n, dtype=np.int64) * 7919 % n
    keys = np.zeros((n, 128), np.uint8)
    keys[:, 0], keys[:, 1] = 97 + order % 26, 48 + order % 10
    return Metadata(
        index=jax.device_put(jnp.asarray(order.astype(np.int32)), rows),
        epoch=jax.device_put(jnp.asarray(2 + np.arange(n, dtype=np.int32) // 64), rows),
        global_step=40,
        batch_idx=jax.device_put(jnp.asarray((order % 97).astype(np.uint16)), rows),
        rng_key=jax.device_put(jax.random.split(jax.random.key(11), n), rows),
        _encoded_key=jax.device_put(jnp.asarray(keys), grid),
        source_info={"mesh": ("x", 8)},
    )


def _check_fixtures() -> None:
    """Both layouts of a sharded batch restore exactly, and every damage is an error."""
    for name, n in (("orbax", 16), ("sharded", 512)):
        expected = _fixture_batch(n, jax.devices())
        with tempfile.TemporaryDirectory() as tmp:
            copy = pathlib.Path(tmp) / "5" / name
            shutil.copytree(FIXTURES / name, copy)
            rebuilt = MetadataCheckpointHandler().restore(copy, MetadataRestore())
            assert_exact(rebuilt, expected, check_sharding=True)
            into = MetadataCheckpointHandler().restore(copy, MetadataRestore(expected))
            assert_exact(into, expected, check_sharding=True)
            if name == "orbax":
                assert "d" in {p.name for p in copy.iterdir()}, _files(copy)
            _check_every_damage(copy)
    print("fixtures of both layouts restore exactly")


def other_devices() -> None:
    """With 4 devices: each fixture restores into a target on them; without a target, each
    is an error naming devices 4 to 7, which its shardings name."""
    assert len(jax.devices()) == 4, jax.devices()
    for name, n in (("orbax", 16), ("sharded", 512)):
        expected = _fixture_batch(n, jax.devices())
        restored = MetadataCheckpointHandler().restore(FIXTURES / name, MetadataRestore(expected))
        assert_exact(restored, expected, check_sharding=True)
    for name in ("sharded", "orbax"):  # arrays in our files, arrays through Orbax
        try:
            MetadataCheckpointHandler().restore(FIXTURES / name, MetadataRestore())
        except MetadataCheckpointError as e:
            assert "no device [4, 5, 6, 7]" in str(e) and "MetadataRestore(target)" in str(e), e
        else:
            raise AssertionError(f"{name}: restored devices 4 to 7 on a process with 4 devices")
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
        copy = pathlib.Path(tmp) / item_dir.parent.name / item_dir.name  # the same step
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
    other_devices() if sys.argv[1:] == ["other_devices"] else main()
