"""``datarax-checkpoint`` on an item saved by two ``jax.distributed`` processes.

Two real processes on 127.0.0.1 (CPU, gloo) save a model sharded over both, each its own
``MetadataManager``, and the global batch's ``Metadata`` (global arrays written by Orbax
from both processes). The command, one process, must check every process's document and
the global arrays, exactly as each process's restore would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import copy_of, flip_byte, run_cli, run_json, tree_state

WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]), initialization_timeout=60)
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from datarax.checkpoint import MetadataManagerSave, MetadataSave
from datarax.core.metadata import Metadata, MetadataManager

me = jax.process_index()
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("p",)), PartitionSpec("p"))
glob = lambda rows: jax.make_array_from_process_local_data(sharding, np.asarray(rows))
manager = MetadataManager(rngs=nnx.Rngs(metadata=100 + me), shard_id=me, track_batches=True)
with ocp.CheckpointManager(sys.argv[3]) as mngr:
    for step in (1, 2):
        records = manager.create_batch_metadata(np.arange(3) + 10 * step + 1000 * me)
        manager.next_batch()
        key_data = jax.random.key_data(records.rng_key)
        batch = Metadata(index=glob(records.index), rng_key=glob(key_data))
        mngr.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave({"w": glob(np.arange(2.0) + 2 * me)}),
            data=MetadataManagerSave(manager), batch=MetadataSave(batch)))
        state = {"counters": dict(manager.state.get_value()), "shard_id": me,
                 "count": int(manager.rngs["metadata"].count.get_value()),
                 "index": np.asarray(records.index).tolist()}
        print("saved " + json.dumps({"step": step, "process": me, **state}), flush=True)
    mngr.wait_until_finished()
"""


@pytest.fixture(scope="module")
def two_process_root(tmp_path_factory) -> tuple[Path, dict[tuple[int, int], dict]]:
    root = tmp_path_factory.mktemp("two") / "root"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, coordinator, str(i), str(root)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    saved = {}
    for job in jobs:
        out, err = job.communicate(timeout=180)
        assert job.returncode == 0, err[-3000:]
        for line in out.splitlines():
            if line.startswith("saved "):
                entry = json.loads(line[len("saved ") :])
                saved[entry["step"], entry["process"]] = entry
    return root, saved


def test_two_process_item_verifies_from_one_process(two_process_root):
    root, saved = two_process_root
    before = tree_state(root)
    code, report = run_json("verify", root, "--quiet")
    assert (code, report["latest_restorable_step"]) == (0, 2), report
    assert tree_state(root) == before  # restoring the global arrays through Orbax wrote nothing
    code, report = run_json("inspect", root)
    assert code == 0
    for step in report["steps"]:
        items = {i["name"]: i for i in step["items"]}
        assert (items["data"]["process_count"], items["batch"]["process_count"]) == (2, 2)
        for process in items["data"]["processes"]:
            want = saved[step["step"], process["process_index"]]
            assert process["counters"] == want["counters"]
            assert process["shard_id"] == want["shard_id"]
            assert process["streams"]["metadata"]["count"] == want["count"]
        for process in items["batch"]["processes"]:
            index = process["nodes"][0]["fields"]["index"]
            assert (index["global"], index["shape"]) == (True, [6])


def test_damage_in_the_second_process_file_is_found(two_process_root, tmp_path):
    root = copy_of(two_process_root[0], tmp_path)
    damaged = root / "2" / "data" / "process_1.jsonl"
    flip_byte(damaged)
    result = run_cli("verify", root, "--quiet")
    assert result.returncode == 1
    assert f"{damaged}: the document's sha256" in result.stdout
    assert "newest restorable step: 1" in result.stdout
    first = root / "2" / "batch" / "process_0.jsonl"
    flip_byte(first)  # the item's kind and process count then come from process 1's file
    code, report = run_json("verify", root, "--quiet", "--step", "2")
    items = {i["name"]: i for i in report["steps"][0]["items"]}
    assert (code, items["batch"]["kind"], items["batch"]["process_count"]) == (1, "Metadata", 2)
    assert [p["file"] for p in items["batch"]["problems"]] == [str(first)]
    assert [p["file"] for p in items["data"]["problems"]] == [str(damaged)]
    array_file = sorted((root / "1" / "batch" / "d").iterdir())[0]  # written by Orbax
    flip_byte(array_file, offset_from_end=1)
    result = run_cli("verify", root, "--quiet", "--step", "1")
    assert f"{array_file}: its sha256 differs from the one listed in" in result.stdout
    (root / "1" / "batch" / "process_1.jsonl").unlink()
    result = run_cli("verify", root, "--quiet")
    assert f"{root / '1' / 'batch' / 'process_1.jsonl'}: missing" in result.stdout
    assert "newest restorable step: none" in result.stdout
