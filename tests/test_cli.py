"""``datarax-checkpoint inspect`` and ``verify``, run as subprocesses on real checkpoints.

Every checkpoint here is written by a real ``ocp.CheckpointManager`` holding a model
(``StandardSave``), a ``MetadataManagerSave`` and a ``MetadataSave`` item; the 2-process one
by two real ``jax.distributed`` processes on 127.0.0.1. Damage is done to copies, file by
file, the way a bad disk or an interrupted ``max_to_keep`` deletion leaves them; what the
command must report is derived from what was saved.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from datarax.checkpoint import (
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
    latest_restorable_step,
    verify,
)
from datarax.core.metadata import Metadata, MetadataManager

STEPS = (1, 2, 3)


def run_cli(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m datarax.checkpoint ARGS`` with this interpreter and PYTHONPATH."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "datarax.checkpoint", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_json(*args: Any) -> tuple[int, dict[str, Any]]:
    result = run_cli(*args, "--json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def manager_state(manager: MetadataManager) -> dict[str, Any]:
    """What ``inspect --keys`` must show for ``manager``, read from the manager itself."""
    return {
        "counters": dict(manager.state.get_value()),
        "shard_id": manager.shard_id,
        "track_batches": manager.track_batches,
        "streams": {
            name: {
                "impl": str(jax.random.key_impl(stream.key.get_value())),
                "key_shape": [],
                "count": int(stream.count.get_value()),
                "key_data": np.asarray(jax.random.key_data(stream.key.get_value())).tolist(),
            }
            for name, stream in sorted(manager.rngs.items())
        },
    }


def batch_of(step: int) -> dict[str, Metadata]:
    return {
        "last": Metadata(index=step * 10, epoch=step, rng_key=jax.random.key(step)),
        "rows": Metadata(index=np.arange(4, dtype=np.int32) + step, global_step=step),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, Any]]]:
    """A root with steps 1, 2, 3, and each step's manager state as saved."""
    root = tmp_path_factory.mktemp("cli") / "root"
    manager = MetadataManager(rngs=nnx.Rngs(metadata=7, dropout=11), shard_id=3)
    expected = {}
    with ocp.CheckpointManager(root) as mngr:
        for step in STEPS:
            manager.create_batch_metadata(np.arange(step * 5))
            manager.next_batch()
            mngr.save(
                step,
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave({"w": np.arange(8.0) * step}),
                    data=MetadataManagerSave(manager),
                    batch=MetadataSave(batch_of(step)),
                ),
            )
            expected[step] = manager_state(manager)
        mngr.wait_until_finished()
    return root, expected


def copy_of(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(root, out)
    return out


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its mtime (ns) and size: any write changes it."""
    state = {".": (root.stat().st_mtime_ns, 0)}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        state[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size)
    return state


def flip_byte(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_intact_root(saved):
    root, _ = saved
    code, report = run_json("verify", root)
    assert code == 0, report
    assert report["ok"] is True
    assert report["latest_restorable_step"] == 3
    assert [s["step"] for s in report["steps"]] == list(STEPS)
    for step in report["steps"]:
        assert step["restorable"] is True
        assert step["problems"] == []
        items = {i["name"]: i for i in step["items"]}
        assert sorted(items) == ["batch", "data", "model"]
        assert (items["data"]["kind"], items["batch"]["kind"]) == ("MetadataManager", "Metadata")
        assert items["model"]["datarax"] is False
        assert all(i["ok"] and i["problems"] == [] for i in items.values())
    text = run_cli("verify", root)
    assert text.returncode == 0
    assert "newest restorable step: 3" in text.stdout


def test_inspect_shows_each_saved_manager_exactly(saved):
    root, expected = saved
    code, report = run_json("inspect", root, "--keys")
    assert code == 0
    for step in report["steps"]:
        items = {i["name"]: i for i in step["items"]}
        data = items["data"]
        assert (data["format_version"], data["process_count"]) == (1, 1)
        (process,) = data["processes"]
        assert process == {"process_index": 0, **expected[step["step"]]}
        (nodes,) = [p["nodes"] for p in items["batch"]["processes"]]
        by_path = {n["path"]: n["fields"] for n in nodes}
        assert by_path["['last']"]["index"] == {"held": "int", "value": step["step"] * 10}
        assert by_path["['rows']"]["index"] == {
            "held": "array",
            "container": "numpy",
            "dtype": "int32",
            "shape": [4],
            "global": False,
        }
    code, without_keys = run_json("inspect", root, "--step", "2")
    assert code == 0
    (step,) = without_keys["steps"]
    streams = next(i for i in step["items"] if i["name"] == "data")["processes"][0]["streams"]
    assert streams["metadata"] == {
        k: v for k, v in expected[2]["streams"]["metadata"].items() if k != "key_data"
    }


def test_verify_writes_nothing(saved, tmp_path):
    root = copy_of(saved[0], tmp_path)
    before = tree_state(root)
    assert run_cli("verify", root, "--quiet").returncode == 0
    assert run_cli("inspect", root).returncode == 0
    assert tree_state(root) == before


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_verify_on_a_read_only_file_system(saved, tmp_path):
    root = copy_of(saved[0], tmp_path)
    cli = f"{sys.executable} -m datarax.checkpoint verify --quiet {root}"
    script = f"mount --bind -o ro {root} {root} && touch {root}/probe 2>/dev/null; echo $?; {cli}"
    result = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", script],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.stdout.startswith("0\n") or "mount" in result.stderr.split("\n", 1)[0]:
        pytest.skip(f"no read-only bind mount here: {result.stderr[:200]}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "newest restorable step: 3" in result.stdout


@pytest.mark.parametrize("item", ["data", "batch"])
def test_verify_names_a_damaged_file_and_the_newest_good_step(saved, tmp_path, item):
    root = copy_of(saved[0], tmp_path)
    damaged = root / "3" / item / "process_0.jsonl"
    flip_byte(damaged)
    result = run_cli("verify", root, "--quiet")
    assert result.returncode == 1
    assert f"{damaged}: the document's sha256" in result.stdout
    assert "newest restorable step: 2" in result.stdout
    assert result.stderr == ""
    code, report = run_json("verify", root, "--quiet")
    assert (code, report["ok"], report["latest_restorable_step"]) == (1, False, 2)
    problems = [p for s in report["steps"] for i in s["items"] for p in i["problems"]]
    assert [p["file"] for p in problems] == [str(damaged)]
    assert latest_restorable_step(root) == 2


def rmtree_operations(path: Path) -> list[tuple[str, Path]]:
    """What ``shutil.rmtree`` (Orbax's deletion of a local step) does, in its order:
    unlink each file as listed, a directory's contents before the directory."""
    ops = []
    with os.scandir(path) as entries:
        for entry in list(entries):
            child = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                ops.extend(rmtree_operations(child))
            else:
                ops.append(("unlink", child))
    ops.append(("rmdir", path))
    return ops


def restores_exactly(root: Path, step: int, expected: dict[str, Any]) -> bool:
    """Whether Orbax restores every item of ``step`` to what was saved."""
    template = MetadataManager(rngs=nnx.Rngs(metadata=0, dropout=0), shard_id=0)
    try:
        with ocp.CheckpointManager(root) as mngr:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(
                    model=ocp.args.StandardRestore({"w": np.zeros(8)}),
                    data=MetadataManagerRestore(template),
                    batch=MetadataRestore(),
                ),
            )
    except Exception:  # whatever Orbax raises for missing files: not restorable
        return False
    return (
        np.array_equal(restored["model"]["w"], np.arange(8.0) * step)
        and manager_state(restored["data"]) == expected
        and restored["batch"] == batch_of(step)
    )


def test_half_deleted_step_is_not_restorable(saved, tmp_path):
    root, expected = saved
    operations = rmtree_operations(root / "1")
    flagged = 0
    for done in range(1, len(operations)):  # every point a SIGKILL can stop rmtree at
        copy = tmp_path / f"k{done}"
        shutil.copytree(root, copy)
        for op, path in operations[:done]:
            target = copy / path.relative_to(root)
            target.unlink() if op == "unlink" else target.rmdir()
        report = verify(copy, step=1)
        if report.ok:  # never a false "restorable"
            assert restores_exactly(copy, 1, expected[1]), operations[:done]
        else:
            flagged += 1
        assert latest_restorable_step(copy) == 3
        shutil.rmtree(copy)
    assert flagged == len(operations) - 1, f"{flagged} of {len(operations) - 1} flagged"


def test_any_one_missing_file_is_flagged_or_harmless(saved, tmp_path):
    # rmtree's order is the file system's listing order: whichever file goes first, the
    # step is reported not restorable, unless Orbax and datarax restore it exactly anyway.
    root, expected = saved
    files = [path for op, path in rmtree_operations(root / "1") if op == "unlink"]
    harmless = []
    for path in files:
        copy = tmp_path / "one"
        shutil.copytree(root, copy)
        (copy / path.relative_to(root)).unlink()
        if verify(copy, step=1).ok:
            assert restores_exactly(copy, 1, expected[1]), path
            harmless.append(path.relative_to(root / "1").as_posix())
        shutil.rmtree(copy)
    # Orbax merges each process's OCDBT database into the item's own on finalize; a small
    # array's values are then inlined in the merged one, which no longer reads them.
    assert all(p.startswith("model/ocdbt.process_0/") for p in harmless), harmless


def test_cli_reports_a_half_deleted_step(saved, tmp_path):
    root = copy_of(saved[0], tmp_path)
    shutil.rmtree(root / "1" / "model")  # rmtree got through the model item, no further
    result = run_cli("verify", root, "--quiet")
    assert result.returncode == 1
    assert "step 1: NOT RESTORABLE" in result.stdout
    assert f"{root / '1' / 'model'}: missing" in result.stdout
    assert "newest restorable step: 3" in result.stdout
    code, report = run_json("verify", root, "--quiet", "--step", "1")
    assert (code, report["latest_restorable_step"]) == (1, None)


def test_not_a_checkpoint_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = run_cli("verify", tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path}: not a checkpoint; expected an Orbax CheckpointManager root" in (
        result.stderr
    )
    assert result.stdout == ""
    missing = run_cli("inspect", tmp_path / "nowhere")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert "no such file or directory" in missing.stderr
    assert run_cli("verify").returncode == 2  # argparse: DIR is required
    assert run_cli("verify", tmp_path, "--step", "x").returncode == 2


def test_progress_goes_to_stderr_unless_quiet(saved):
    root, _ = saved
    loud = run_cli("verify", root, "--step", "2")
    assert loud.returncode == 0
    assert "verify: step 2 (1 of 1)" in loud.stderr
    quiet = run_cli("verify", root, "--step", "2", "--quiet")
    assert (quiet.returncode, quiet.stderr, quiet.stdout) == (0, "", loud.stdout)
    assert run_cli("verify", root, "--step", "9").returncode == 2


# --- two jax.distributed processes -------------------------------------------------------

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
    code, report = run_json("verify", root, "--quiet")
    assert (code, report["latest_restorable_step"]) == (0, 2), report
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
    (root / "1" / "batch" / "process_1.jsonl").unlink()
    result = run_cli("verify", root, "--quiet")
    assert f"{root / '1' / 'batch' / 'process_1.jsonl'}: missing" in result.stdout
    assert "newest restorable step: none" in result.stdout
