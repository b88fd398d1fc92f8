"""MetadataManagerCheckpointHandler: exact round trips, async snapshots, mismatches."""

from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from checkpoint_oracle import manager_state, next_records
from etils import epath
from flax import nnx

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataSave,
)
from datarax.checkpoint.integrity import dumps_document, loads_document
from datarax.core.metadata import MetadataManager


def _rngs(kind: str, seed: int = 0) -> nnx.Rngs | None:
    if kind == "none":
        return None
    if kind == "threefry":
        return nnx.Rngs(metadata=42 + seed)
    if kind == "rbg":
        return nnx.Rngs(metadata=jax.random.key(7 + seed, impl="rbg"))
    if kind == "several":
        return nnx.Rngs(
            metadata=jax.random.key(1 + seed, impl="rbg"),
            params=jax.random.key(2 + seed, impl="threefry2x32"),
            dropout=jax.random.key(3 + seed, impl="unsafe_rbg"),
        )
    raise AssertionError(kind)


def _build(kind: str, *, track_batches: bool = True, shard_id: int | None = 3) -> MetadataManager:
    return MetadataManager(
        rngs=_rngs(kind), initial_epoch=2, initial_step=100, track_batches=track_batches,
        shard_id=shard_id,
    )  # fmt: skip


def _advance(manager: MetadataManager, n: int) -> None:
    """Moves a manager through records, batches and an epoch, by both of its paths."""
    for i in range(n):
        manager.create_metadata(record_key=f"r{i}")
    manager.next_batch()
    manager.create_batch_metadata(list(range(n)))
    if manager.rngs is not None and "params" in vars(manager.rngs):
        manager.rngs.params()  # a stream the manager never uses still round-trips
    manager.next_epoch()
    manager.create_metadata(record_key=0)


KINDS = ["none", "threefry", "rbg", "several"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("track_batches", [True, False])
@pytest.mark.parametrize("seed", [0, 100])
def test_handler_round_trip_continues_the_stream(tmp_path, kind, track_batches, seed):
    saved = _build(kind, track_batches=track_batches)
    _advance(saved, 7)
    handler = MetadataManagerCheckpointHandler()
    handler.save(epath.Path(tmp_path), MetadataManagerSave(saved))

    # Built with other seeds (all keys are replaced) or the same ones (keys are kept).
    fresh = MetadataManager(rngs=_rngs(kind, seed=seed), track_batches=track_batches)
    if fresh.rngs is not None:
        for _, stream in fresh.rngs.items():
            stream()
    restored = handler.restore(epath.Path(tmp_path), MetadataManagerRestore(fresh))

    assert restored is fresh
    assert manager_state(fresh) == manager_state(saved)
    assert next_records(fresh, 6) == next_records(saved, 6)


def test_composite_with_model_state_as_in_the_spec(tmp_path):
    params = {"w": np.arange(6.0).reshape(2, 3), "b": np.ones(3)}
    manager = _build("several")
    _advance(manager, 5)
    reference = _build("several")
    _advance(reference, 5)
    state_at_save = dict(manager.state.get_value())

    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(
            10,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(params), data=MetadataManagerSave(manager)
            ),
        )
        mngr.wait_until_finished()
    _advance(manager, 3)  # the saved run goes on; the checkpoint must not

    fresh = _build("several")
    with ocp.CheckpointManager(tmp_path) as mngr:
        restored = mngr.restore(
            10,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), data=MetadataManagerRestore(fresh)
            ),
        )
        described = mngr.item_metadata(10)

    assert restored["data"] is fresh
    np.testing.assert_array_equal(restored["state"]["w"], params["w"])
    assert manager_state(fresh) == manager_state(reference)
    assert next_records(fresh, 8) == next_records(reference, 8)
    info = described["data"]
    assert info["format_version"] == 1 and info["process_count"] == 1
    assert info["kind"] == "MetadataManager"
    assert info["streams"]["metadata"]["impl"] == "rbg"
    assert set(info["streams"]) == {"metadata", "params", "dropout"}
    assert info["state"] == state_at_save


def test_manager_advances_right_after_async_save(tmp_path):
    manager = _build("threefry")
    _advance(manager, 4)
    at_call = manager_state(manager)
    reference = _build("threefry")
    _advance(reference, 4)

    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(1, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
        # No wait: the loop goes on while the commit runs in the background.
        for _ in range(3):
            _advance(manager, 50)
        manager.reset()
        mngr.wait_until_finished()
        fresh = _build("threefry")
        mngr.restore(1, args=ocp.args.Composite(data=MetadataManagerRestore(fresh)))

    assert manager_state(fresh) == at_call
    assert next_records(fresh, 4) == next_records(reference, 4)


def test_several_saves_each_hold_their_own_step(tmp_path):
    manager = _build("rbg")
    states = {}
    with ocp.CheckpointManager(tmp_path) as mngr:
        for step in range(4):
            _advance(manager, step + 1)
            states[step] = manager_state(manager)
            mngr.save(step, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
        mngr.wait_until_finished()
        for step in range(4):
            fresh = _build("rbg")
            mngr.restore(step, args=ocp.args.Composite(data=MetadataManagerRestore(fresh)))
            assert manager_state(fresh) == states[step]


@pytest.mark.parametrize(
    ("fresh", "expected"),
    [
        (lambda: MetadataManager(rngs=nnx.Rngs(metadata=0, noise=1)), "not saved: ['noise']"),
        (lambda: MetadataManager(rngs=nnx.Rngs(other=0)), "missing here: ['metadata']"),
        (lambda: MetadataManager(), "saved streams ['metadata'], this manager has no rngs"),
        (lambda: MetadataManager(rngs=nnx.Rngs(metadata=0), track_batches=True), "track_batches"),
        (
            lambda: MetadataManager(rngs=nnx.Rngs(metadata=jax.random.key(0, impl="rbg"))),
            "saved a typed threefry2x32 key, this manager has a typed rbg key",
        ),
    ],
)
def test_a_manager_built_differently_is_refused_and_left_unchanged(tmp_path, fresh, expected):
    saved = MetadataManager(rngs=nnx.Rngs(metadata=0))
    _advance(saved, 3)
    handler = MetadataManagerCheckpointHandler()
    handler.save(epath.Path(tmp_path), MetadataManagerSave(saved))
    target = fresh()
    before = manager_state(target)
    with pytest.raises(MetadataCheckpointError, match="built differently") as err:
        handler.restore(epath.Path(tmp_path), MetadataManagerRestore(target))
    assert expected in str(err.value)
    assert "process_0.jsonl" in str(err.value)
    assert manager_state(target) == before


def test_saved_without_rngs_refuses_a_manager_with_rngs(tmp_path):
    handler = MetadataManagerCheckpointHandler()
    handler.save(epath.Path(tmp_path), MetadataManagerSave(MetadataManager()))
    with pytest.raises(MetadataCheckpointError, match="saved no rngs"):
        handler.restore(
            epath.Path(tmp_path), MetadataManagerRestore(MetadataManager(rngs=nnx.Rngs(0)))
        )


def _rewrite(path: epath.Path, **changes: object) -> None:
    doc = loads_document(path.read_bytes(), str(path))
    path.write_bytes(dumps_document({**doc, **changes}))


def test_a_different_process_count_names_both_counts(tmp_path):
    directory = epath.Path(tmp_path)
    handler = MetadataManagerCheckpointHandler()
    handler.save(directory, MetadataManagerSave(MetadataManager(rngs=nnx.Rngs(0))))
    _rewrite(directory / "process_0.jsonl", process_count=4)
    with pytest.raises(MetadataCheckpointError, match=r"saved by 4 process\(es\), restored by 1"):
        handler.restore(directory, MetadataManagerRestore(MetadataManager(rngs=nnx.Rngs(0))))


def test_only_another_process_file_names_the_counts(tmp_path):
    directory = epath.Path(tmp_path)
    handler = MetadataManagerCheckpointHandler()
    handler.save(directory, MetadataManagerSave(MetadataManager()))
    for i in (1, 2):
        (directory / f"process_{i}.jsonl").write_bytes((directory / "process_0.jsonl").read_bytes())
    (directory / "process_0.jsonl").unlink()
    with pytest.raises(MetadataCheckpointError, match=r"2 process\(es\).*runs 1 process"):
        handler.restore(directory, MetadataManagerRestore(MetadataManager()))


def test_a_metadata_item_is_not_restored_as_a_manager(tmp_path):
    from datarax.checkpoint import MetadataCheckpointHandler
    from datarax.core.metadata import Metadata

    directory = epath.Path(tmp_path)
    MetadataCheckpointHandler().save(directory, MetadataSave(Metadata()))
    with pytest.raises(MetadataCheckpointError, match="holds a 'Metadata' item"):
        MetadataManagerCheckpointHandler().restore(
            directory, MetadataManagerRestore(MetadataManager())
        )


def test_args_are_checked():
    with pytest.raises(TypeError, match="expects a MetadataManager"):
        MetadataManagerSave({"not": "a manager"})
    with pytest.raises(TypeError, match="MetadataManagerRestore expects"):
        MetadataManagerRestore(None)
    with pytest.raises(TypeError, match="args=MetadataManagerSave"):
        MetadataManagerCheckpointHandler().save(epath.Path("/nonexistent"), MetadataSave(None))


def test_document_is_plain_json_lines(tmp_path):
    directory = epath.Path(tmp_path)
    manager = MetadataManager(rngs=nnx.Rngs(metadata=5), shard_id=2)
    manager.create_metadata(record_key=0)
    MetadataManagerCheckpointHandler().save(directory, MetadataManagerSave(manager))
    assert [p.name for p in directory.iterdir()] == ["process_0.jsonl"]
    header, body = (directory / "process_0.jsonl").read_text().split("\n")
    assert json.loads(header)["format_version"] == 1
    doc = json.loads(body)
    assert doc["state"] == {"global_step": 1, "epoch": 0, "index": 1, "batch_idx": None}
    assert doc["shard_id"] == 2
    assert doc["rngs"]["metadata"] == {
        "typed": True, "impl": "threefry2x32", "key_shape": [], "key_data": [0, 5],
        "count_shape": [], "count": [1],
    }  # fmt: skip


def test_a_traced_counter_is_refused_before_writing(tmp_path):
    manager = MetadataManager()
    manager.state.set_value({**manager.state.get_value(), "index": 1.5})
    with pytest.raises(MetadataCheckpointError, match=r"manager.state\['index'\]"):
        MetadataManagerCheckpointHandler().save(epath.Path(tmp_path), MetadataManagerSave(manager))
    assert list(epath.Path(tmp_path).iterdir()) == []


def test_reused_args_save_the_state_of_each_save(tmp_path):
    manager = _build("threefry")
    args = MetadataManagerSave(manager)
    handler = MetadataManagerCheckpointHandler()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    handler.save(epath.Path(tmp_path / "a"), args)
    _advance(manager, 3)
    handler.save(epath.Path(tmp_path / "b"), args)
    fresh = _build("threefry")
    handler.restore(epath.Path(tmp_path / "b"), MetadataManagerRestore(fresh))
    assert manager_state(fresh) == manager_state(manager)


def test_importing_the_plugin_leaves_jax_uninitialised():
    """A multi-process job imports datarax before ``jax.distributed.initialize()``, which
    must run before the XLA backend starts."""
    import subprocess
    import sys

    code = (
        "import datarax.checkpoint\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized(), 'import initialised XLA'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
