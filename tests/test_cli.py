"""``datarax-checkpoint inspect`` and ``verify``, run as subprocesses on real checkpoints.

Every checkpoint here is written by a real ``ocp.CheckpointManager`` holding a model
(``StandardSave``), a ``MetadataManagerSave`` and a ``MetadataSave`` item. Damage is done to
copies, file by file, the way a bad disk or an interrupted ``max_to_keep`` deletion leaves
them; what the command must report is derived from what was saved. An item saved by two
processes: ``test_cli_two_process.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_helpers import copy_of, flip_byte, run_cli, run_json, tree_state
from flax import nnx

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
    cli,
    latest_restorable_step,
    verify,
)
from datarax.checkpoint.integrity import FORMAT_VERSION, write_item_manifest
from datarax.core.metadata import Metadata, MetadataManager

STEPS = (1, 2, 3)


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
        assert (data["format_version"], data["process_count"]) == (FORMAT_VERSION, 1)
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


def rewrite_document(path: Path, change: Any) -> None:
    """Applies ``change`` to a document and writes it back with a matching header: damage
    that only decoding the document, as a restore does, can find."""
    header_line, body = path.read_bytes().split(b"\n", 1)
    doc = json.loads(body)
    change(doc)
    body = json.dumps(doc, separators=(",", ":")).encode()
    header = json.loads(header_line)
    header.update(sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    path.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n" + body)
    write_item_manifest(path.parent)  # re-listed: only the document's content is wrong


def _bad_key(doc: dict[str, Any]) -> None:
    doc["rngs"]["metadata"]["key_data"] = [1, 2, 3]  # a threefry key holds 2 words


def _bad_array(doc: dict[str, Any]) -> None:
    node = next(n for n in doc["nodes"] if n["path"] == "['rows']")
    node["fields"]["index"]["array"]["shape"] = [5]  # 4 int32 values are saved


@pytest.mark.parametrize(
    ("item", "change", "message"),
    [
        ("data", _bad_key, "cannot rebuild a key of impl 'threefry2x32'"),
        ("batch", _bad_array, "not an encoded array"),
    ],
)
def test_verify_decodes_documents_as_a_restore_does(saved, tmp_path, item, change, message):
    root = copy_of(saved[0], tmp_path)
    damaged = root / "2" / item / "process_0.jsonl"
    rewrite_document(damaged, change)
    result = run_cli("verify", root, "--quiet", "--step", "2")
    assert result.returncode == 1
    assert f"problem: {damaged}: " in result.stdout
    assert message in result.stdout
    with pytest.raises(MetadataCheckpointError, match=re.escape(message)):
        restore_item(root, 2, item)  # what the restore itself says


def restore_item(root: Path, step: int, item: str) -> Any:
    template = MetadataManager(rngs=nnx.Rngs(metadata=7, dropout=11), shard_id=3)
    args = MetadataManagerRestore(template) if item == "data" else MetadataRestore()
    with ocp.CheckpointManager(root) as mngr:
        return mngr.restore(step, args=ocp.args.Composite(**{item: args}))


def test_a_fifo_in_an_item_is_reported_not_opened(saved, tmp_path):
    root = copy_of(saved[0], tmp_path)
    fifo = root / "3" / "batch" / "process_0.jsonl"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would block forever
    result = run_cli("verify", root, "--quiet", timeout=60)
    assert result.returncode == 1
    assert f"{fifo}: not a regular file" in result.stdout
    assert "newest restorable step: 2" in result.stdout


def test_inspect_an_item_or_a_step_directory(saved):
    root, expected = saved
    code, report = run_json("inspect", root / "2" / "data", "--keys")
    assert (code, report["layout"]) == (0, "item")
    (step,) = report["steps"]
    assert step["step"] == 2
    (item,) = step["items"]
    assert item["processes"] == [{"process_index": 0, **expected[2]}]
    code, report = run_json("verify", root / "2", "--quiet")
    assert (code, report["layout"], report["latest_restorable_step"]) == (0, "step", 2)
    assert run_cli("verify", root / "2", "--step", "2").returncode == 2  # a root's option


def rmtree_operations(path: Path) -> list[tuple[str, Path]]:
    """What ``shutil.rmtree`` (Orbax's deletion of a step with one thread) does, in order:
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
    # Orbax deletes a local step's files from several threads, in no set order, before it
    # removes the directories (path/deleter.py, _ParallelDirectoryDeleter): whichever file
    # goes first, the step is reported not restorable, unless it still restores exactly.
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
    result = run_cli("verify", root.name, "--quiet", cwd=root.parent)  # a relative path
    assert result.returncode == 1
    assert "step 1: NOT RESTORABLE" in result.stdout
    assert f"{Path(root.name) / '1' / 'model'}: missing" in result.stdout
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
    for bad in (["verify"], ["verify", str(tmp_path), "--step", "x"], ["check", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:  # argparse's usage errors, in-process
            cli.run(bad)
        assert exit_info.value.code == 2


def test_progress_goes_to_stderr_unless_quiet(saved):
    root, _ = saved
    loud = run_cli("verify", root, "--step", "2")
    assert loud.returncode == 0
    assert "verify: step 2 (1 of 1)" in loud.stderr
    quiet = run_cli("verify", root, "--step", "2", "--quiet")
    assert (quiet.returncode, quiet.stderr, quiet.stdout) == (0, "", loud.stdout)
    assert cli.run(["verify", str(root), "--step", "9", "--quiet"]) == 2


def test_console_script_entry_point_is_the_cli():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = pyproject["project"]["scripts"]["datarax-checkpoint"]
    module, function = target.split(":")
    assert getattr(importlib.import_module(module), function) is cli.main
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["--help"])
    assert exit_info.value.code == 0


def test_step_names_with_a_prefix_and_a_fixed_length(tmp_path):
    options = ocp.CheckpointManagerOptions(step_prefix="step", step_format_fixed_length=4)
    manager = MetadataManager(rngs=nnx.Rngs(metadata=1))
    with ocp.CheckpointManager(tmp_path / "root", options=options) as mngr:
        for step in (0, 10):
            mngr.save(step, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["step_0000", "step_0010"]
    report = verify(tmp_path / "root")
    assert ([s.step for s in report.steps], report.latest_restorable_step) == ([0, 10], 10)
    assert latest_restorable_step(tmp_path / "root") == 10


def test_verify_reads_the_format_1_fixture_without_writing():
    # Items saved by the handlers directly (no CheckpointManager step): a directory of items.
    fixture = Path(__file__).parent / "fixtures" / "checkpoint_v1"
    before = tree_state(fixture)
    code, report = run_json("verify", fixture, "--quiet")
    assert (code, report["layout"], report["ok"]) == (0, "step", True), report
    (step,) = report["steps"]
    assert {i["name"]: (i["kind"], i["format_version"]) for i in step["items"]} == {
        "manager": ("MetadataManager", 1),
        "metadata": ("Metadata", 1),
    }
    assert tree_state(fixture) == before
