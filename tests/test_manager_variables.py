"""How a MetadataManager treats its Variables: hooks, nnx transforms, plain jax.jit.

One rule: a Variable with an ``on_get_value``/``on_set_value`` hook always goes through
``get_value``/``set_value``, so its hooks see every read and write; the fast path is only
for Variables without hooks.
"""

import flax.errors
import jax
import numpy as np
import pytest
from flax import nnx

from datarax.core._position import build_manager, read_position
from datarax.core.metadata import MetadataManager


def kd(key):
    return np.asarray(jax.random.key_data(key))


def _plain(x):
    """Integer scalars as ints, so that hook calls compare with lists of ints."""
    integer = isinstance(x, int) or jax.numpy.issubdtype(getattr(x, "dtype", object), np.integer)
    return int(x) if integer and np.ndim(x) == 0 else x


def _recorder(calls):
    def hook(variable, value):
        calls.append(jax.tree.map(_plain, value))
        return value

    return hook


def _hooked_variable(manager, where):
    stream = manager.rngs.metadata
    return {"state": manager.state, "count": stream.count, "key": stream.key}[where]


def _create(manager):
    records = [manager.create_metadata(i, source_info={"i": i}) for i in range(3)]
    batch = manager.create_batch_metadata([3, 4])
    return records, batch


@pytest.mark.parametrize("where", ["state", "count", "key"])
def test_a_variable_with_hooks_sees_every_read_and_write(where):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=3), track_batches=True)
    twin = MetadataManager(rngs=nnx.Rngs(metadata=3), track_batches=True)
    sets, gets = [], []
    _hooked_variable(manager, where).set_metadata(
        on_set_value=_recorder(sets), on_get_value=_recorder(gets)
    )
    records, batch = _create(manager)
    expected, expected_batch = _create(twin)
    for r, e in zip(records, expected, strict=True):
        assert (r.index, r.global_step, r.batch_idx) == (e.index, e.global_step, e.batch_idx)
        np.testing.assert_array_equal(kd(r.rng_key), kd(e.rng_key))
    np.testing.assert_array_equal(np.asarray(batch.index), expected_batch.index)
    np.testing.assert_array_equal(kd(batch.rng_key), kd(expected_batch.rng_key))
    # Every write of the hooked Variable went through set_value: 3 records and 1 batch.
    if where == "state":
        assert [s["index"] for s in sets] == [1, 2, 3, 5]
        assert [s["global_step"] for s in sets] == [1, 2, 3, 5]
    elif where == "count":
        assert sets == [1, 2, 3, 5]
    else:
        assert sets == []  # the key is read, never written
        assert len(gets) == 4  # 3 stream calls and 1 batch read it through get_value
    reads = len(gets)
    position = read_position(manager)  # the snapshot reads through get_value too
    assert len(gets) == reads + 1
    expected_position = read_position(twin)
    assert position.state == expected_position.state
    count = position.streams["metadata"].count
    assert int(count) == int(expected_position.streams["metadata"].count) == 5


def test_a_manager_built_from_a_position_continues_like_the_original():
    manager = MetadataManager(rngs=nnx.Rngs(metadata=2, params=1), shard_id=4)
    _create(manager)
    twin = build_manager(read_position(manager))
    a, b = manager.create_metadata(9), twin.create_metadata(9)
    assert (a.index, a.global_step, a.shard_id) == (b.index, b.global_step, b.shard_id)
    np.testing.assert_array_equal(kd(a.rng_key), kd(b.rng_key))


@pytest.mark.parametrize("keys", [[7, 8, 9], ["a", "bb", "c"]])
def test_a_batch_inside_nnx_jit_equals_records_outside(keys):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=4), track_batches=True, shard_id=1)
    twin = MetadataManager(rngs=nnx.Rngs(metadata=4), track_batches=True, shard_id=1)

    @nnx.jit
    def batch(m):
        return m.create_batch_metadata(keys, source_info={"in": "jit"})

    got = [batch(manager), batch(manager)]
    expected = [twin.create_metadata(k, source_info={"in": "jit"}) for k in keys + keys]
    for i, e in enumerate(expected):
        b, j = got[i // len(keys)], i % len(keys)
        assert b.source_info == e.source_info
        assert b.record_key[j] == e.record_key
        fields = ("index", "epoch", "global_step", "batch_idx", "shard_id")
        assert [int(getattr(b, f)[j]) for f in fields] == [getattr(e, f) for f in fields]
        np.testing.assert_array_equal(kd(b.rng_key[j]), kd(e.rng_key))
    position, expected_position = read_position(manager), read_position(twin)
    assert {k: int(v) for k, v in position.state.items()} == expected_position.state
    assert int(position.streams["metadata"].count) == 6
    after = manager.create_batch_metadata(keys)  # and outside the transform again
    np.testing.assert_array_equal(kd(after.rng_key), kd(twin.create_batch_metadata(keys).rng_key))


@pytest.mark.parametrize(
    "create", [lambda m: m.create_metadata(1), lambda m: m.create_batch_metadata([1, 2])]
)
def test_a_plain_jit_closure_is_refused_and_changes_nothing(create):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
    manager.create_metadata(0)
    before = read_position(manager)
    with pytest.raises(flax.errors.TraceContextError):
        jax.jit(lambda: create(manager).index)()
    after = read_position(manager)
    assert after.state == before.state
    assert int(after.streams["metadata"].count) == int(before.streams["metadata"].count) == 1


class _Logged(nnx.Variable):
    """Flax's replacement for hooks: a Variable type that overrides get_value/set_value."""

    def get_value(self, **kwargs):
        self.get_metadata("log").append("get")
        return super().get_value(**kwargs)

    def set_value(self, value, **kwargs):
        self.get_metadata("log").append("set")
        return super().set_value(value, **kwargs)


def test_a_variable_type_overriding_get_and_set_value_sees_every_read_and_write(tmp_path):
    import orbax.checkpoint as ocp

    from datarax.checkpoint import MetadataManagerSave

    manager = MetadataManager(rngs=nnx.Rngs(metadata=3))
    log: list[str] = []
    manager.state = _Logged(manager.state.get_value(), log=log)
    twin = MetadataManager(rngs=nnx.Rngs(metadata=3))
    records, batch = _create(manager)
    expected, expected_batch = _create(twin)
    assert [r.index for r in records] == [e.index for e in expected] == [0, 1, 2]
    np.testing.assert_array_equal(batch.index, expected_batch.index)
    assert log.count("set") == 4  # 3 records and 1 batch, each through set_value
    reads = log.count("get")
    assert reads >= 4
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(1, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
        mngr.wait_until_finished()
        assert log.count("get") > reads  # the snapshot read it through get_value
        assert mngr.restore(1)["data"].state.get_value() == twin.state.get_value()


def test_a_batch_of_jax_array_keys_concrete_or_traced_behaves_like_records():
    """Record keys computed by JAX (a sampler's indices): concrete, the batch holds them as
    NumPy; traced (inside nnx.scan), as the traced array, just as records hold them."""
    manager = MetadataManager(rngs=nnx.Rngs(metadata=4), track_batches=True)
    twin = MetadataManager(rngs=nnx.Rngs(metadata=4), track_batches=True)
    concrete = manager.create_batch_metadata(jax.numpy.arange(3, dtype=jax.numpy.int32) + 7)
    assert type(concrete.record_key) is np.ndarray
    assert concrete.record_key.tolist() == [7, 8, 9]
    expected_keys = twin.create_batch_metadata([7, 8, 9]).rng_key
    np.testing.assert_array_equal(kd(concrete.rng_key), kd(expected_keys))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def batches(m, ids):
        return m, m.create_batch_metadata(ids)

    ids = jax.numpy.arange(6, dtype=jax.numpy.int32).reshape(2, 3) * 5
    _, got = batches(manager, ids)
    for i, expected in enumerate(twin.create_metadata(int(k)) for k in ids.reshape(-1)):
        b, j = divmod(i, 3)
        assert int(got.record_key[b, j]) == expected.record_key
        assert int(got.index[b, j]) == expected.index
        np.testing.assert_array_equal(kd(got.rng_key[b, j]), kd(expected.rng_key))
    with pytest.raises(TypeError, match="float32"):
        manager.create_batch_metadata(jax.numpy.zeros(2))
