"""MetadataCheckpointHandler: exact round trips of Metadata pytrees, targets, refusals."""

from __future__ import annotations

import functools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from checkpoint_oracle import assert_exact
from etils import epath
from flax import nnx

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataCheckpointHandler,
    MetadataRestore,
    MetadataSave,
)
from datarax.checkpoint.records import record_to_metadata
from datarax.core.metadata import Metadata, MetadataManager, create_metadata

B = 6
SOURCE_INFO = {
    "files": ("train-000.rec", "train-001.rec"),
    3: "an int key",
    (1, "a"): [1.5, -0.0, True, None, 1],
    "$not_a_tag": {"nested": [(), [], {}], "ü": "ünïcødé \udc80"},
}


def _batched() -> Metadata:
    keys = jax.random.split(jax.random.key(9, impl="rbg"), B)
    encoded = np.zeros((B, 128), np.uint8)
    encoded[:, 0] = np.arange(65, 65 + B)
    return Metadata(
        index=jnp.arange(B), epoch=jnp.full(B, 2, jnp.int32), global_step=np.arange(B) + 40,
        batch_idx=jnp.zeros(B, jnp.int32), shard_id=np.full(B, 1, np.int16), rng_key=keys,
        _encoded_key=jnp.asarray(encoded), source_info={"batch": True},
    )  # fmt: skip


ITEMS = {
    "plain": lambda: Metadata(),
    "ints_and_record_key": lambda: Metadata(
        index=5, epoch=1, global_step=9, batch_idx=0, shard_id=3, key="train/00042"
    ),
    "typed_threefry": lambda: create_metadata(index=1, seed=3, record_key="k"),
    "typed_rbg": lambda: Metadata(rng_key=jax.random.key(4, impl="rbg")),
    "typed_unsafe_rbg": lambda: Metadata(rng_key=jax.random.key(4, impl="unsafe_rbg")),
    "raw_threefry": lambda: Metadata(index=2, rng_key=jax.random.PRNGKey(11)),
    "raw_rbg": lambda: Metadata(rng_key=jax.random.key_data(jax.random.key(5, impl="rbg"))),
    "raw_numpy_key": lambda: Metadata(rng_key=np.array([1, 2], np.uint32)),
    "numpy_counters": lambda: Metadata(
        index=np.int64(7), epoch=np.array(3, np.int32), global_step=np.uint8(255)
    ),
    "source_info": lambda: Metadata(index=1, source_info=SOURCE_INFO),
    "batched": _batched,
    "nested": lambda: {
        "train": [Metadata(index=1, key="a"), None, (Metadata(epoch=2), _batched())],
        "eval": {7: Metadata(rng_key=jax.random.key(0)), 2: [Metadata(shard_id=1)]},
        "empty": [],
    },
    "list_of_metadata": lambda: [create_metadata(index=i, seed=i) for i in range(4)],
}


@pytest.mark.parametrize("name", sorted(ITEMS))
def test_handler_round_trip_without_and_with_target(tmp_path, name):
    item = ITEMS[name]()
    directory = epath.Path(tmp_path)
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave(item))
    handler.finalize(directory)
    assert_exact(handler.restore(directory, MetadataRestore()), item)
    assert_exact(handler.restore(directory, MetadataRestore(ITEMS[name]())), item)
    assert_exact(handler.restore(directory), item)


def test_a_target_from_jax_eval_shape_restores_the_saved_item(tmp_path):
    """Orbax's abstract-target habit: ``jax.eval_shape`` of the item turns its Python ints
    into weakly typed int32 ShapeDtypeStructs; they restore as the ints saved, the arrays
    as JAX arrays (the target's container)."""
    item = {
        "a": Metadata(
            index=np.arange(4, dtype=np.int32),
            epoch=2,
            global_step=2**30,
            rng_key=jax.random.key(3),
            key="k",
        ),
        "b": [Metadata(batch_idx=7, source_info={"s": (1,)})],
    }
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(1, args=ocp.args.Composite(x=MetadataSave(item)))
        mngr.wait_until_finished()
        abstract = jax.eval_shape(lambda: item)
        restored = mngr.restore(1, args=ocp.args.Composite(x=MetadataRestore(abstract)))["x"]
    expected = {"a": item["a"].replace(index=jax.numpy.asarray(item["a"].index)), "b": item["b"]}
    assert_exact(restored, expected)
    assert type(restored["a"].global_step) is int and restored["a"].global_step == 2**30
    with pytest.raises(MetadataCheckpointError, match=r"saved a Python int, the target has"):
        concrete = jax.tree.map(lambda x: jax.numpy.int32(0) if type(x) is int else x, item)
        MetadataCheckpointHandler().restore(
            epath.Path(tmp_path) / "1" / "x", MetadataRestore(concrete)
        )


@pytest.mark.parametrize("name", ["nested", "source_info", "typed_rbg"])
def test_round_trip_through_checkpoint_manager(tmp_path, name):
    item = ITEMS[name]()
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(
            3,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"w": np.ones(3)}), meta=MetadataSave(item)
            ),
        )
        mngr.wait_until_finished()
    with ocp.CheckpointManager(tmp_path) as mngr:
        restored = mngr.restore(
            3, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=MetadataRestore())
        )
        described = mngr.item_metadata(3)["meta"]
    assert_exact(restored["meta"], item)
    assert described["format_version"] == 2
    assert described["process_count"] == 1
    assert described["restorable_without_target"] is True


def test_saved_values_are_those_at_the_call(tmp_path):
    counters = np.arange(4)
    info = {"files": ["a"]}
    item = Metadata(index=counters, source_info=info)
    expected = Metadata(index=counters.copy(), source_info={"files": ["a"]})
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(1, args=ocp.args.Composite(meta=MetadataSave(item)))
        counters[:] = 99  # the caller reuses its buffers right after save() returns
        info["files"].append("b")
        mngr.wait_until_finished()
        restored = mngr.restore(1, args=ocp.args.Composite(meta=MetadataRestore()))
    assert_exact(restored["meta"], expected)


def test_description_names_how_each_field_is_held(tmp_path):
    directory = epath.Path(tmp_path)
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave({"b": _batched(), "k": ITEMS["raw_threefry"]()}))
    nodes = handler.metadata(directory)["nodes"]
    assert nodes["['b']"]["index"] == "a jax array int32[6]"
    assert nodes["['b']"]["global_step"] == "a numpy array int64[6]"
    assert nodes["['b']"]["rng_key"] == "a typed rbg key"
    assert nodes["['k']"]["rng_key"] == "a raw key uint32[2]"
    assert nodes["['k']"]["index"] == "a Python int"
    assert nodes["['k']"]["batch_idx"] == "None"


def test_target_containers_and_sharding_are_used(tmp_path):
    directory = epath.Path(tmp_path)
    item = _batched()
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave(item))
    device = jax.devices()[0]
    target = jax.tree.map(
        lambda x: np.asarray(x) if x is item.index else x, item
    )  # index wanted as NumPy
    single = jax.sharding.SingleDeviceSharding(device)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single) if x is item.epoch else x,
        target,
    )
    restored = handler.restore(directory, MetadataRestore(target))
    assert type(restored.index) is np.ndarray
    np.testing.assert_array_equal(restored.index, np.arange(B))
    assert isinstance(restored.epoch, jax.Array) and restored.epoch.devices() == {device}
    assert_exact(restored.rng_key, item.rng_key)


class Pair(NamedTuple):
    first: Metadata
    second: Metadata


def test_custom_containers_need_a_target(tmp_path):
    directory = epath.Path(tmp_path)
    item = Pair(Metadata(index=1), Metadata(index=2))
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave(item))
    with pytest.raises(MetadataCheckpointError, match=r"item is a Pair.*MetadataRestore\(target\)"):
        handler.restore(directory, MetadataRestore())
    assert_exact(handler.restore(directory, MetadataRestore(Pair(Metadata(), Metadata()))), item)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"a": Metadata()}, r"saved Metadata at \[''\].*\['a'\]"),
        (
            Metadata(index=np.arange(2)),
            r"item\.index: saved a Python int, the target has a ndarray",
        ),
        (Metadata(index=1, shard_id=0), r"item\.shard_id: saved None, the target has a int"),
        (
            Metadata(index=1, rng_key=jax.random.key(0)),
            r"item\.rng_key: saved a typed rbg key, the target has a typed threefry2x32 key",
        ),
    ],
)
def test_a_target_that_does_not_match_is_refused(tmp_path, target, expected):
    directory = epath.Path(tmp_path)
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave(Metadata(index=1, rng_key=jax.random.key(0, impl="rbg"))))
    with pytest.raises(MetadataCheckpointError, match=expected):
        handler.restore(directory, MetadataRestore(target))


def test_an_array_target_of_another_shape_is_refused(tmp_path):
    directory = epath.Path(tmp_path)
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave(Metadata(index=jnp.arange(4))))
    with pytest.raises(MetadataCheckpointError, match=r"saved a jax array int32\[4\]"):
        handler.restore(directory, MetadataRestore(Metadata(index=jnp.arange(5))))


@pytest.mark.parametrize(
    ("source_info", "path"),
    [
        ({"files": ["a", "b", "c", {"x"}]}, r"source_info\['files'\]\[3\]: it is a set"),
        ({"blob": b"\x00"}, r"source_info\['blob'\]: it is a bytes"),
        ({"loss": float("nan")}, r"source_info\['loss'\]: it is a non-finite float"),
        ({"n": np.int64(3)}, r"source_info\['n'\]: it is a int64 .*; convert it"),
        ({"k": (1, object())}, r"source_info\['k'\]\[1\]: it is a object"),
        ({frozenset({1}): 1}, r"source_info key frozenset\(\{1\}\): it is a frozenset"),
    ],
)
def test_bad_source_info_is_refused_before_anything_is_written(tmp_path, source_info, path):
    directory = epath.Path(tmp_path)
    item = {"train": [Metadata(index=0), Metadata(index=1, source_info=source_info)]}
    handler = MetadataCheckpointHandler()
    with pytest.raises(MetadataCheckpointError, match=r"item\['train'\]\[1\]\." + path):
        handler.save(directory, MetadataSave(item))
    assert list(directory.iterdir()) == []


def test_bad_source_info_fails_the_manager_save_and_writes_no_item_files(tmp_path):
    item = Metadata(source_info={"files": ["a", "b", "c", {"x"}]})
    with ocp.CheckpointManager(tmp_path) as mngr:
        with pytest.raises(MetadataCheckpointError, match=r"source_info\['files'\]\[3\]"):
            mngr.save(1, args=ocp.args.Composite(meta=MetadataSave(item)))
        mngr.wait_until_finished()
        assert mngr.all_steps() == []
    written = [p for p in pathlib.Path(tmp_path).rglob("*") if p.is_file()]
    assert not [p for p in written if p.name.startswith("process_")]


def test_leaves_other_than_metadata_are_refused(tmp_path):
    with pytest.raises(MetadataCheckpointError, match=r"item\['x'\]: .*found int"):
        MetadataCheckpointHandler().save(
            epath.Path(tmp_path), MetadataSave({"m": Metadata(), "x": 1})
        )


def test_a_traced_item_is_refused(tmp_path):
    handler = MetadataCheckpointHandler()

    @jax.jit
    def inside(m):
        with pytest.raises(MetadataCheckpointError, match="Save outside JAX transformations"):
            handler.save(epath.Path(tmp_path), MetadataSave(m))
        return m

    inside(Metadata(index=jnp.int32(1)))


def test_args_built_early_save_the_values_at_the_save_call(tmp_path):
    counters = np.arange(4)
    info = {"files": ["a"]}
    args = MetadataSave(Metadata(index=counters, source_info=info))  # built before the loop
    counters[:] = 7  # the program goes on using its buffers
    info["files"].append("b")
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(1, args=ocp.args.Composite(meta=args))
        counters[:] = 99
        info["files"].append("c")
        mngr.save(2, args=ocp.args.Composite(meta=args))  # the same args, reused
        counters[:] = 100
        mngr.wait_until_finished()
        first, second = (
            mngr.restore(step, args=ocp.args.Composite(meta=MetadataRestore()))["meta"]
            for step in (1, 2)
        )
    assert_exact(first, Metadata(index=np.full(4, 7), source_info={"files": ["a", "b"]}))
    assert_exact(second, Metadata(index=np.full(4, 99), source_info={"files": ["a", "b", "c"]}))


def test_int64_saved_with_x64_is_an_error_without_it_never_narrowed(tmp_path):
    directory = epath.Path(tmp_path)
    handler = MetadataCheckpointHandler()
    with jax.enable_x64(True):
        big = jnp.arange(3, dtype=jnp.int64) + 2**40
        handler.save(directory, MetadataSave({"m": Metadata(index=big, epoch=np.int64(2**40))}))
        restored = handler.restore(directory)["m"]
        assert restored.index.dtype == jnp.int64 and restored.index.tolist()[0] == 2**40
    with pytest.raises(
        MetadataCheckpointError,
        match=r"item\['m'\]\.index: saved as a JAX array of dtype int64.*jax_enable_x64 is off",
    ):
        handler.restore(directory)
    as_numpy = handler.restore(
        directory, MetadataRestore({"m": Metadata(index=np.zeros(3, np.int64), epoch=np.int64(0))})
    )
    assert as_numpy["m"].index.tolist() == [2**40, 2**40 + 1, 2**40 + 2]


def _nested(depth: int, leaf: Any, wrap: Any = list) -> Any:
    return functools.reduce(lambda t, _: wrap([t]) if wrap is list else (t,), range(depth), leaf)


PAIR = "\ud83d\ude00"  # one astral character written as two surrogate code points
UNCARRIABLE = {
    "huge int field": (lambda: Metadata(index=10**5000), r"item\.index: an int of more than 4300"),
    "huge int value": (
        lambda: Metadata(source_info={"n": [10**5000]}),
        r"source_info\['n'\]\[0\]: an int of more",
    ),
    "huge int key": (
        lambda: Metadata(source_info={10**5000: 1}),
        r"source_info key <an int of 16610 bits>: an int of more than 4300 digits",
    ),
    "huge int item key": (lambda: {10**5000: Metadata()}, r"an int of more than 4300 digits"),
    "tuples 490 deep": (
        lambda: Metadata(source_info={"t": _nested(490, (), tuple)}),
        r"source_info\['t'\]\[0\].*: source_info is nested more than 100 levels deep",
    ),
    "item 150 deep": (lambda: _nested(150, Metadata()), r"nested more than 100 levels deep"),
    "item 100000 deep": (lambda: _nested(100_000, Metadata()), r"nested more than 100 levels"),
    "surrogate pair value": (
        lambda: Metadata(source_info={"s": PAIR}),
        r"source_info\['s'\]: it is a str holding a surrogate pair",
    ),
    "surrogate pair key": (
        lambda: Metadata(source_info={PAIR: 1, "\U0001f600": 2}),
        r"source_info key '\\ud83d\\ude00': it is a str holding",
    ),
    "surrogate pair item key": (
        lambda: {PAIR: Metadata()},
        r"item key '\\ud83d\\ude00': it is a str holding",
    ),
}


@pytest.mark.parametrize("case", sorted(UNCARRIABLE))
def test_what_json_cannot_carry_exactly_is_refused_at_the_save_call(tmp_path, case):
    make, path = UNCARRIABLE[case]
    item = make()
    with ocp.CheckpointManager(tmp_path) as mngr:
        with pytest.raises(MetadataCheckpointError, match=path):
            mngr.save(1, args=ocp.args.Composite(meta=MetadataSave(item)))
        mngr.wait_until_finished()
        assert mngr.all_steps() == []
    assert list(pathlib.Path(tmp_path).iterdir()) == []


def test_a_lone_surrogate_and_a_real_astral_character_come_back_exactly(tmp_path):
    item = Metadata(source_info={"\udc80": "\ud83d", "\U0001f600": "a\udc80b\U0001f600"})
    directory = epath.Path(tmp_path)
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave(item))
    assert_exact(handler.restore(directory), item)


def test_a_batch_from_create_batch_metadata_is_refused_naming_the_conversion(tmp_path):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0), track_batches=True, shard_id=3)
    batch = manager.create_batch_metadata([f"train/{i}" for i in range(5)])
    with pytest.raises(MetadataCheckpointError, match=r"MetadataSave\(record_to_metadata\("):
        MetadataSave(batch)
    converted = record_to_metadata(batch)
    directory = epath.Path(tmp_path)
    handler = MetadataCheckpointHandler()
    handler.save(directory, MetadataSave(converted))
    restored = handler.restore(directory)
    assert_exact(restored, converted)
    assert restored.index.tolist() == batch.index.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(
        jax.random.key_data(restored.rng_key), jax.random.key_data(batch.rng_key)
    )
    assert [restored.replace(_encoded_key=k).entry_key for k in restored._encoded_key] == [
        f"train/{i}" for i in range(5)
    ]
    with pytest.raises(MetadataCheckpointError, match=r"holds str record keys only"):
        record_to_metadata(manager.create_batch_metadata([1, 2]))


def test_a_manager_given_to_metadata_save_is_refused_naming_manager_save():
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
    for item in (manager, {"data": manager}):
        with pytest.raises(
            MetadataCheckpointError,
            match=r"found MetadataManager\. .*MetadataManagerSave\(manager\)",
        ):
            MetadataSave(item)


def test_an_item_made_unsavable_after_its_args_were_built_fails_at_the_save_call(tmp_path):
    info = {"files": ["a"]}
    args = MetadataSave(Metadata(index=1, source_info=info))
    info["files"].append({1, 2})
    with ocp.CheckpointManager(tmp_path) as mngr:
        with pytest.raises(
            MetadataCheckpointError, match=r"source_info\['files'\]\[1\]: it is a set"
        ):
            mngr.save(1, args=ocp.args.Composite(meta=args))
        mngr.wait_until_finished()
        mngr.save(2, args=ocp.args.Composite(meta=MetadataSave(Metadata(index=2))))
        mngr.wait_until_finished()
        assert mngr.all_steps() == [2]
        restored = mngr.restore(2, args=ocp.args.Composite(meta=MetadataRestore()))
    assert restored["meta"] == Metadata(index=2)
    written = pathlib.Path(tmp_path).rglob("process_*")
    assert [p.relative_to(tmp_path).parts[0] for p in written] == ["2"]


@pytest.mark.parametrize("error", [KeyError, TypeError, AttributeError])
def test_a_bug_in_decoding_is_not_reported_as_a_damaged_file(tmp_path, monkeypatch, error):
    # The document is checked (checksum, then schema) before it is decoded; an error while
    # decoding a checked document is a bug of this library, and must surface as itself.
    from datarax.checkpoint import metadata_handler

    handler = MetadataCheckpointHandler()
    handler.save(epath.Path(tmp_path), MetadataSave(ITEMS["ints_and_record_key"]()))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error("a bug")

    monkeypatch.setattr(metadata_handler, "decode_item", broken)
    with pytest.raises(error, match="a bug"):
        handler.restore(epath.Path(tmp_path), MetadataRestore())
