"""A checkpoint in the oldest supported format, resumed by today's code through Orbax.

The checkpoint engineer keeps, under ``tests/fixtures/checkpoint_v<N>/``, items written
when format version N was current, and never regenerates them. The oldest one goes into a
``CheckpointManager`` step here: its Metadata item restores with exact values, and a job
resumes its manager, goes on with today's code, is killed with SIGKILL during an async save
of today's format, resumes again, and its stream is exactly the one the fixture's manager
would have produced had it never stopped.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from datarax.checkpoint import MetadataRestore
from datarax.core.metadata import MetadataManager
from integration.workers.streams import fixture_next_record, resume_point, resumed_logs

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures"
SAVED_AT, KILL_AT, UNTIL = 45, 55, 70


def oldest_fixture() -> Path:
    versions = {
        int(m.group(1)): path
        for path in FIXTURES.glob("checkpoint_v*")
        if (m := re.fullmatch(r"checkpoint_v(\d+)", path.name)) and path.is_dir()
    }
    if not versions:
        pytest.skip(f"no checkpoint_v<N> fixture under {FIXTURES}")
    return versions[min(versions)]


def fixture_manager() -> MetadataManager:
    """The manager state the v1 fixture holds (tests/fixtures/make_checkpoint_v1.py: an rbg
    ``metadata`` stream of key 3 after 5 records, a ``params`` stream of key 11 used once)."""
    manager = MetadataManager(
        rngs=nnx.Rngs(metadata=jax.random.key(3, impl="rbg"), params=11),
        initial_epoch=2, initial_step=45, track_batches=True, shard_id=1,
    )  # fmt: skip
    manager.state.set_value({"global_step": 45, "epoch": 2, "index": 5, "batch_idx": 1})
    for _ in range(5):
        manager.rngs.metadata()
    manager.rngs.params()
    return manager


@pytest.mark.timeout(150)
def test_oldest_format_resumes_through_checkpoint_manager(processes, tmp_path):
    fixture = oldest_fixture()
    checkpoints = tmp_path / "checkpoints"
    for item in ("manager", "metadata"):
        shutil.copytree(fixture / item, checkpoints / str(SAVED_AT) / item)

    with ocp.CheckpointManager(checkpoints) as mngr:
        assert mngr.all_steps() == [SAVED_AT]
        item = mngr.restore(SAVED_AT, args=ocp.args.Composite(metadata=MetadataRestore()))
    last, (batch,) = item["metadata"]["last"], item["metadata"]["batch"]
    assert (last.index, last.epoch, last.global_step, last.batch_idx, last.shard_id) == (
        4, 2, 44, 1, 1,
    )  # fmt: skip
    assert last.entry_key == "train/00004"
    assert last.source_info == {"files": ("a.rec", "b.rec"), 7: [1.5, None]}
    assert type(last.source_info["files"]) is tuple
    assert jax.random.key_impl(last.rng_key) == jax.random.key_impl(jax.random.key(0))
    assert jax.random.key_data(last.rng_key).tolist() == [0, 5]
    assert batch.index.dtype == np.int32 and batch.index.tolist() == [0, 1, 2]
    assert type(batch.epoch) is np.int64 and batch.epoch == 2
    assert isinstance(batch.global_step, jax.Array) and batch.global_step.tolist() == [41, 42, 43]
    assert batch.rng_key.dtype == np.uint32 and batch.rng_key.tolist() == [0, 9]  # a raw key
    assert (batch.batch_idx, batch.shard_id, batch.source_info) == (None, None, None)

    common = ["--checkpoints", checkpoints, "--until", str(UNTIL)]
    killed = processes.worker(
        "fixture_job", *common, "--log", tmp_path / "killed.jsonl", "--announce-save", str(KILL_AT)
    )
    killed.wait_for_line(f"saving {KILL_AT}", timeout=90)
    killed.kill()
    assert killed.wait(timeout=30) == -9
    assert f"start {SAVED_AT}" in killed.lines, killed.output
    # The save in flight at the kill may or may not have committed: resume from what did.
    # save() returns only once the previous save committed, so it is one of these two.
    starts_at = resume_point(checkpoints)
    assert starts_at in (KILL_AT - 5, KILL_AT), starts_at  # a step in today's format
    resumed = processes.worker("fixture_job", *common, "--log", tmp_path / "resumed.jsonl")
    assert resumed.wait(timeout=90) == 0, resumed.output
    assert f"start {starts_at}" in resumed.lines, resumed.output

    stream = resumed_logs([tmp_path / "killed.jsonl", tmp_path / "resumed.jsonl"])
    assert sorted(stream) == list(range(SAVED_AT, UNTIL))
    first = stream[SAVED_AT]
    assert (first["index"], first["epoch"], first["batch_idx"], first["shard_id"]) == (5, 2, 1, 1)
    expected_key = jax.random.fold_in(jax.random.key(3, impl="rbg"), 5)
    assert first["rng_key"] == jax.random.key_data(expected_key).tolist()
    manager = fixture_manager()
    for step in range(SAVED_AT, UNTIL):
        assert stream[step] == fixture_next_record(manager), f"step {step}"
