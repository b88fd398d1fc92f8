"""A whole item copied from another run's step of the same number is refused, naming the
files: the item's document (a single process's item, which has no manifest) or its manifest
records the start of the step it was saved in, which Orbax's ``_CHECKPOINT_METADATA`` beside
the item must repeat. Whole steps copied are fine."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataCheckpointHandler,
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
    verify,
)
from datarax.core.metadata import Metadata, MetadataManager

N = 1 << 15  # large enough for a process_0.bin blob


def _run(root: pathlib.Path, seed: int, asynchronous: bool = True) -> None:
    """Saves steps 1 and 2 of a run: a manager and a batch with a blob."""
    manager = MetadataManager(rngs=nnx.Rngs(metadata=seed))
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=asynchronous)
    with ocp.CheckpointManager(root, options=options) as mngr:
        for step in (1, 2):
            for _ in range(step + 3 * seed):
                manager.create_metadata(record_key=step)
            batch = Metadata(
                index=(np.arange(N, dtype=np.int32) * (seed + 3)) % 1009,
                global_step=step,
                rng_key=jax.random.split(jax.random.key(seed), N),
            )
            args = ocp.args.Composite(data=MetadataManagerSave(manager), batch=MetadataSave(batch))
            mngr.save(step, args=args)
        mngr.wait_until_finished()


def _restore(root: pathlib.Path, item: str) -> object:
    args = {"data": MetadataManagerRestore(), "batch": MetadataRestore()}[item]
    with ocp.CheckpointManager(root) as mngr:
        return mngr.restore(1, args=ocp.args.Composite(**{item: args}))[item]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    a, b = tmp_path_factory.mktemp("run_a"), tmp_path_factory.mktemp("run_b")
    _run(a, seed=0)
    _run(b, seed=1, asynchronous=False)
    return a, b


@pytest.mark.parametrize("item", ["data", "batch"])
def test_a_whole_item_from_another_run_at_the_same_step_is_refused(runs, tmp_path, item):
    a, b = runs
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.rmtree(mixed / "1" / item)
    shutil.copytree(b / "1" / item, mixed / "1" / item)
    with pytest.raises(MetadataCheckpointError, match="copied from another run") as e:
        _restore(mixed, item)
    assert f"1/{item}/process_0.jsonl" in str(e.value)
    assert "1/_CHECKPOINT_METADATA" in str(e.value)
    report = verify(mixed, step=1)
    assert not report.ok
    assert "copied from another run" in json.dumps(report.to_json())


def test_whole_steps_copied_between_runs_restore_exactly(runs, tmp_path):
    a, b = runs
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.rmtree(mixed / "1")
    shutil.copytree(b / "1", mixed / "1")  # a whole step of run b: consistent
    restored = _restore(mixed, "data")
    assert restored.state.get_value()["index"] == 4  # run b's step 1: 1 + 3 records
    assert _restore(mixed, "batch").index[:3].tolist() == [0, 4, 8]
    for root in (a, b):  # async and sync saves both record the step's start
        step_metadata = json.loads((root / "1" / "_CHECKPOINT_METADATA").read_text())
        for item in ("batch", "data"):
            assert not (root / "1" / item / "item_manifest.jsonl").exists()
            doc = (root / "1" / item / "process_0.jsonl").read_bytes().split(b"\n")[1]
            save = json.loads(doc)["save"]
            assert save["step"] == 1
            assert save["step_started"] == step_metadata["init_timestamp_nsecs"]


def test_an_item_moved_out_of_its_step_still_restores(runs, tmp_path):
    # What cannot be checked is not refused: an item copied on its own into a directory
    # named like its step (no Orbax metadata beside it) restores, as before.
    a, _ = runs
    alone = tmp_path / "1" / "batch"
    shutil.copytree(a / "1" / "batch", alone)
    restored = MetadataCheckpointHandler().restore(epath.Path(alone), MetadataRestore())
    assert restored.index[:3].tolist() == [0, 3, 6]


FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "checkpoint_v2_step_tie" / "3"


def test_the_fixture_with_step_started_restores_exactly():
    restored = MetadataManagerCheckpointHandler().restore(epath.Path(FIXTURE / "data"))
    assert restored.state.get_value() == {"global_step": 4, "epoch": 1, "index": 4, "batch_idx": 1}
    record = restored.create_metadata(record_key=4)
    expected = jax.random.fold_in(jax.random.key(5), 4)
    assert record.index == 4
    np.testing.assert_array_equal(
        jax.random.key_data(record.rng_key), jax.random.key_data(expected)
    )


def test_the_fixture_beside_another_saves_step_metadata_is_refused(tmp_path):
    step = tmp_path / "3"
    shutil.copytree(FIXTURE, step)
    metadata = json.loads((step / "_CHECKPOINT_METADATA").read_text())
    metadata["init_timestamp_nsecs"] += 1
    (step / "_CHECKPOINT_METADATA").write_text(json.dumps(metadata))
    with pytest.raises(MetadataCheckpointError, match="copied from another run"):
        MetadataManagerCheckpointHandler().restore(epath.Path(step / "data"))
