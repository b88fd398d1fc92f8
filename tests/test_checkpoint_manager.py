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
from datarax.checkpoint.integrity import (
    FORMAT_VERSION,
    dumps_document,
    loads_document,
    write_item_manifest,
)
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
    before = manager_state(fresh)
    restored = handler.restore(epath.Path(tmp_path), MetadataManagerRestore(fresh))
    from_document_alone = handler.restore(epath.Path(tmp_path), MetadataManagerRestore())

    assert restored is not fresh and manager_state(fresh) == before
    assert manager_state(restored) == manager_state(saved)
    assert manager_state(from_document_alone) == manager_state(saved)
    expected = next_records(saved, 6)
    assert next_records(restored, 6) == expected
    assert next_records(from_document_alone, 6) == expected


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

    np.testing.assert_array_equal(restored["state"]["w"], params["w"])
    assert manager_state(restored["data"]) == manager_state(reference)
    assert next_records(restored["data"], 8) == next_records(reference, 8)
    info = described["data"]
    assert info["format_version"] == FORMAT_VERSION and info["process_count"] == 1
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
        restored = mngr.restore(1, args=ocp.args.Composite(data=MetadataManagerRestore()))

    assert manager_state(restored["data"]) == at_call
    assert next_records(restored["data"], 4) == next_records(reference, 4)


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
            args = ocp.args.Composite(data=MetadataManagerRestore(_build("rbg")))
            assert manager_state(mngr.restore(step, args=args)["data"]) == states[step]


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
    with pytest.raises(
        MetadataCheckpointError, match="template manager is built differently"
    ) as err:
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
    write_item_manifest(path.parent)  # re-listed: only the document's content is wrong


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
    with pytest.raises(TypeError, match="MetadataManagerRestore expects a template"):
        MetadataManagerRestore({"not": "a manager"})
    with pytest.raises(TypeError, match="args=MetadataManagerSave"):
        MetadataManagerCheckpointHandler().save(epath.Path("/nonexistent"), MetadataSave(None))


def test_document_is_plain_json_lines(tmp_path):
    directory = epath.Path(tmp_path)
    manager = MetadataManager(rngs=nnx.Rngs(metadata=5), shard_id=2)
    manager.create_metadata(record_key=0)
    MetadataManagerCheckpointHandler().save(directory, MetadataManagerSave(manager))
    assert [p.name for p in directory.iterdir()] == ["process_0.jsonl"]  # the whole item
    header, body = (directory / "process_0.jsonl").read_text().split("\n")
    assert json.loads(header)["format_version"] == FORMAT_VERSION
    doc = json.loads(body)
    assert set(doc["save"]) == {"nonce", "step", "step_started"}
    assert (doc["save"]["step"], doc["save"]["step_started"]) == (None, None)  # no Orbax step
    assert doc["state"] == {"global_step": 1, "epoch": 0, "index": 1, "batch_idx": None}
    assert doc["shard_id"] == 2
    assert doc["rngs"]["metadata"] == {
        "typed": True, "impl": "threefry2x32", "key_shape": [], "key_data": [0, 5],
        "count_shape": [], "count": [1],
    }  # fmt: skip


@pytest.mark.parametrize("big", [2**63, 10**5000], ids=["2**63", "10**5000"])
def test_a_counter_json_or_int64_cannot_hold_is_refused_at_the_save_call(tmp_path, big):
    # 10**5000 has more digits than json.dumps writes: it used to pass the check, make save()
    # return True and fail in Orbax's commit thread, leaving a temporary step directory.
    manager = MetadataManager(initial_step=big)
    refused = pytest.raises(MetadataCheckpointError, match=r"state\['global_step'\].*2\*\*63")
    with ocp.CheckpointManager(tmp_path) as mngr, refused:
        mngr.save(1, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
    assert list(tmp_path.iterdir()) == []


def test_a_float_counter_is_refused_before_writing(tmp_path):
    manager = MetadataManager()
    manager.state.set_value({**manager.state.get_value(), "index": 1.5})
    with pytest.raises(MetadataCheckpointError, match=r"manager.state\['index'\]"):
        MetadataManagerCheckpointHandler().save(epath.Path(tmp_path), MetadataManagerSave(manager))
    assert list(epath.Path(tmp_path).iterdir()) == []


def test_a_save_inside_a_jax_transformation_is_refused_naming_the_counter():
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
    found = []

    @nnx.jit
    def step(m: MetadataManager) -> None:
        m.create_metadata(record_key=0)  # the counters are tracers here
        try:
            MetadataManagerSave(m)
        except MetadataCheckpointError as e:
            found.append(str(e))

    step(manager)
    assert len(found) == 1
    assert "manager.state['global_step']" in found[0] and "outside JAX transforms" in found[0]


def test_reused_args_save_the_state_of_each_save(tmp_path):
    manager = _build("threefry")
    args = MetadataManagerSave(manager)
    handler = MetadataManagerCheckpointHandler()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    handler.save(epath.Path(tmp_path / "a"), args)
    _advance(manager, 3)
    handler.save(epath.Path(tmp_path / "b"), args)
    restored = handler.restore(epath.Path(tmp_path / "b"), MetadataManagerRestore())
    assert manager_state(restored) == manager_state(manager)


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


# ---------------------------------------------------------------------------------------
# What is saved is the position at the CheckpointManager.save call (issue 8, item 1).


def test_args_built_before_the_manager_advanced_save_the_position_at_save(tmp_path):
    manager = _build("threefry")
    args = MetadataManagerSave(manager)  # built early, as before a training loop
    _advance(manager, 5)
    at_save = manager_state(manager)
    reference = _build("threefry")
    _advance(reference, 5)
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(5, args=ocp.args.Composite(data=args))
        mngr.wait_until_finished()
        restored = mngr.restore(
            5, args=ocp.args.Composite(data=MetadataManagerRestore(_build("threefry")))
        )
    assert manager_state(restored["data"]) == at_save
    assert next_records(restored["data"], 4) == next_records(reference, 4)


def test_args_reused_across_steps_save_each_step_s_position(tmp_path):
    manager = _build("several")
    args = ocp.args.Composite(data=MetadataManagerSave(manager))  # built once, reused
    states = {}
    with ocp.CheckpointManager(tmp_path) as mngr:
        for step in range(1, 5):
            _advance(manager, step)
            states[step] = manager_state(manager)
            mngr.save(step, args=args)
        mngr.wait_until_finished()
        for step, state in states.items():
            restored = mngr.restore(
                step, args=ocp.args.Composite(data=MetadataManagerRestore(_build("several")))
            )
            assert manager_state(restored["data"]) == state, step


def test_args_of_a_skipped_step_reused_later_save_the_later_position(tmp_path):
    manager = _build("rbg")
    options = ocp.CheckpointManagerOptions(save_interval_steps=2)
    with ocp.CheckpointManager(tmp_path, options=options) as mngr:
        assert mngr.save(0, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
        _advance(manager, 1)
        args = ocp.args.Composite(data=MetadataManagerSave(manager))
        assert mngr.save(1, args=args) is False  # skipped by save_interval_steps
        _advance(manager, 4)
        at_step_2 = manager_state(manager)
        assert mngr.save(2, args=args) is True
        mngr.wait_until_finished()
        restored = mngr.restore(
            2, args=ocp.args.Composite(data=MetadataManagerRestore(_build("rbg")))
        )
    assert manager_state(restored["data"]) == at_step_2


def test_an_unsaveable_manager_is_refused_when_the_args_are_built(tmp_path):
    manager = MetadataManager()
    manager.state.set_value({**manager.state.get_value(), "epoch": -1})
    with pytest.raises(MetadataCheckpointError, match=r"manager.state\['epoch'\]"):
        MetadataManagerSave(manager)
    assert list(tmp_path.iterdir()) == []


def test_a_manager_made_unsaveable_after_its_args_were_built_fails_at_the_save_call(tmp_path):
    manager = MetadataManager()
    args = ocp.args.Composite(data=MetadataManagerSave(manager))
    manager.state.set_value({**manager.state.get_value(), "epoch": -1})
    with ocp.CheckpointManager(tmp_path) as mngr:
        with pytest.raises(MetadataCheckpointError, match=r"changed after its Metadata"):
            mngr.save(1, args=args)
        manager.state.set_value({**manager.state.get_value(), "epoch": 0})
        assert mngr.save(2, args=args)  # the next save goes on as usual
        mngr.wait_until_finished()
        assert mngr.all_steps() == [2]


# ---------------------------------------------------------------------------------------
# A restore returns a new manager; the one passed in is a template (issue 8, item 5).


def test_restore_returns_a_new_manager_and_leaves_the_template_alone(tmp_path):
    saved = _build("several")
    _advance(saved, 6)
    handler = MetadataManagerCheckpointHandler()
    handler.save(epath.Path(tmp_path), MetadataManagerSave(saved))
    template = _build("several")
    before = manager_state(template)
    restored = handler.restore(epath.Path(tmp_path), MetadataManagerRestore(template))
    assert restored is not template and isinstance(restored, MetadataManager)
    assert manager_state(template) == before
    assert manager_state(restored) == manager_state(saved)
    assert next_records(restored, 5) == next_records(saved, 5)
    assert manager_state(template) == before


@pytest.mark.parametrize("damage", ["missing model item", "corrupted model file"])
def test_a_failed_composite_restore_leaves_the_passed_manager_unchanged(tmp_path, damage):
    params = {"w": np.arange(6.0).reshape(2, 3)}
    saved = _build("several")
    _advance(saved, 4)
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(
            3,
            args=ocp.args.Composite(
                data=MetadataManagerSave(saved), model=ocp.args.StandardSave(params)
            ),
        )
        mngr.wait_until_finished()
    model_dir = tmp_path / "3" / "model"
    if damage == "missing model item":
        import shutil

        shutil.rmtree(model_dir)
    else:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file() and path.name != "_METADATA" and path.stat().st_size > 0:
                path.write_bytes(b"\x00" * path.stat().st_size)
    template = _build("several")
    _advance(template, 2)  # a fallback would start from here
    before = manager_state(template)
    with ocp.CheckpointManager(tmp_path) as mngr, pytest.raises(Exception):  # noqa: B017
        mngr.restore(
            3,
            args=ocp.args.Composite(
                data=MetadataManagerRestore(template), model=ocp.args.StandardRestore(params)
            ),
        )
    assert manager_state(template) == before


# ---------------------------------------------------------------------------------------
# A fresh process restores every datarax item with no args (issue 10, item 1).

_FRESH_PROCESS = """
import json, sys
import jax
import numpy as np
import orbax.checkpoint as ocp
import datarax.checkpoint

with ocp.CheckpointManager(sys.argv[1]) as mngr:
    restored = mngr.restore(int(sys.argv[2]))
manager = restored["data"]
out = {"items": sorted(restored.keys()), "model": np.asarray(restored["model"]["w"]).tolist(),
       "manager": type(manager).__name__, "batch_index": int(restored["batch"].index),
       "batch_source_info": restored["batch"].source_info, "records": []}
for i in range(4):
    r = manager.create_metadata(record_key=i)
    out["records"].append([r.index, r.epoch, r.global_step, r.batch_idx, r.shard_id,
                           np.asarray(jax.random.key_data(r.rng_key)).tolist()])
print(json.dumps(out))
"""


def test_a_fresh_process_restores_every_item_with_no_args(tmp_path):
    import subprocess
    import sys

    from datarax.core.metadata import Metadata

    params = {"w": np.arange(4.0)}
    manager = _build("rbg")
    _advance(manager, 3)
    batch = Metadata(index=7, epoch=1, source_info={"file": "a.rec"})
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(
            2,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(params),
                data=MetadataManagerSave(manager),
                batch=MetadataSave(batch),
            ),
        )
        mngr.wait_until_finished()
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(tmp_path), "2"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    expected = [[*r[:5], r[5]] for r in next_records(manager, 4)]
    assert out == {
        "items": ["batch", "data", "model"],
        "model": [0.0, 1.0, 2.0, 3.0],
        "manager": "MetadataManager",
        "batch_index": 7,
        "batch_source_info": {"file": "a.rec"},
        "records": expected,
    }


def test_steps_name_the_handlers_by_their_public_names(tmp_path):
    """Every checkpoint written so far names the handlers by their public names in Orbax's
    step metadata, which a fresh process looks up (see the test above): they must stay."""
    from datarax.core.metadata import Metadata

    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(
            1,
            args=ocp.args.Composite(
                data=MetadataManagerSave(MetadataManager()), batch=MetadataSave(Metadata())
            ),
        )
        mngr.wait_until_finished()
        assert mngr.metadata(1).item_handlers == {
            "data": "datarax.checkpoint.MetadataManagerCheckpointHandler",
            "batch": "datarax.checkpoint.MetadataCheckpointHandler",
        }
