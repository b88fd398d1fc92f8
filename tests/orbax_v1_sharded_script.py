"""Run by ``test_checkpoint_orbax_v1.py`` in a fresh process with 4 CPU devices.

A Metadata whose arrays are sharded over the 4 devices of this process, saved with Orbax
v1: its arrays go to ``process_0.bin`` with their shardings, and the v0 handler's finalize
(run by the v1 handler's background save, after every process committed) writes the item's
manifest. It restores into a target's sharding, or onto the saved one, and a damaged array
file is an error naming it (arrays spread over several processes, through Orbax's array
serialization: ``orbax_v1_multiprocess_script.py``). Prints ``OK`` when every check
passed.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

if "jax" in sys.modules:
    raise RuntimeError("run this script in a fresh process: it sets the device count")
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import orbax.checkpoint.experimental.v1 as ocp_v1
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from checkpoint_oracle import assert_exact

from datarax.checkpoint import MetadataCheckpointError, MetadataRestore
from datarax.core.metadata import Metadata

B = 8192  # 128 KiB of rbg key data: the arrays go to process_0.bin
# Written by the handler's finalize: from format version 2 it lists every file of the item.


def main() -> None:
    devices = np.array(jax.devices())
    assert devices.size == 4, devices
    saved = NamedSharding(Mesh(devices, ("x",)), P("x"))
    other = NamedSharding(Mesh(devices.reshape(2, 2), ("a", "b")), P("a"))
    item = {
        "batch": Metadata(
            index=jax.device_put(jnp.arange(B, dtype=jnp.int32) + 100, saved),
            rng_key=jax.device_put(jax.random.split(jax.random.key(1, impl="rbg"), B), saved),
            global_step=5,
            source_info={"mesh": ("x", 4)},
        )
    }
    abstract = jax.ShapeDtypeStruct((B,), jnp.int32, sharding=other)
    target = jax.tree.map(lambda x: abstract if x is item["batch"].index else x, item)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "1"
        ocp_v1.save_checkpointables(path, {"meta": item})
        names = {p.name for p in (path / "meta").iterdir()}
        assert names - {"commit_success.txt"} == {"process_0.jsonl", "process_0.bin"}, names
        rebuilt = ocp_v1.load_checkpointables(path)["meta"]
        assert_exact(rebuilt, item, check_sharding=True)
        restored = ocp_v1.load_checkpointables(path, {"meta": target})["meta"]
        assert_exact(restored, item)
        assert restored["batch"].index.sharding == other, restored["batch"].index.sharding
        with ocp.CheckpointManager(tmp) as mngr:  # the v0 API reads the same files
            v0 = mngr.restore(1, args=ocp.args.Composite(meta=MetadataRestore()))["meta"]
        assert_exact(v0, item, check_sharding=True)
        print("restored, also into another sharding and through CheckpointManager")

        array_files = sorted(
            p
            for p in (path / "meta").rglob("*")
            if p.is_file()
            and p.stat().st_size > 0
            and p.suffix != ".jsonl"
            and p.name != "commit_success.txt"
        )
        assert [p.name for p in array_files] == ["process_0.bin"], names
        victim = array_files[-1]
        data = victim.read_bytes()
        i = len(data) // 2
        victim.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :])
        try:
            ocp_v1.load_checkpointables(path)
        except MetadataCheckpointError as e:
            assert victim.name in str(e), e
        else:
            raise AssertionError(f"{victim}: damaged, yet loaded")
        print(f"damaged {victim.relative_to(path)}: an error naming it")
    print("OK")


if __name__ == "__main__":
    main()
