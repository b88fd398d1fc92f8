"""MetadataManager: counters, the `metadata` stream's keys, batches and observable state."""

import copy

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from datarax.core.metadata import MetadataManager, RecordMetadata


def kd(key):
    return np.asarray(jax.random.key_data(key))


def test_initial_state_follows_the_seed():
    m = MetadataManager(initial_epoch=2, initial_step=5)
    assert m.state.get_value() == {"global_step": 5, "epoch": 2, "index": 0, "batch_idx": None}
    t = MetadataManager(track_batches=True, shard_id=3)
    assert t.state.get_value()["batch_idx"] == 0 and t.shard_id == 3
    assert isinstance(m.state, nnx.Variable)


def test_inspect_shows_the_seed_signature():
    """nnx.Module's metaclass hides ``__init__`` behind ``(*args, **kwargs)``; the seed's
    constructor signature is what ``inspect.signature`` must show."""
    import inspect

    assert str(inspect.signature(MetadataManager)) == (
        "(*, rngs: 'nnx.Rngs | None' = None, initial_epoch: 'int' = 0, initial_step: 'int' = 0, "
        "track_batches: 'bool' = False, shard_id: 'int | None' = None) -> 'None'"
    )
    assert str(inspect.signature(MetadataManager.create_metadata)) == (
        "(self, record_key: 'Any', source_info: 'dict[str, Any] | None' = None) -> 'RecordMetadata'"
    )


def test_create_metadata_returns_current_counters_then_advances():
    m = MetadataManager(initial_epoch=1, initial_step=10, track_batches=True, shard_id=2)
    first = m.create_metadata("a", source_info={"f": 1})
    second = m.create_metadata("b")
    assert isinstance(first, RecordMetadata)
    assert (first.index, first.epoch, first.global_step, first.batch_idx, first.shard_id) == (
        0,
        1,
        10,
        0,
        2,
    )
    assert (first.record_key, first.source_info, first.rng_key) == ("a", {"f": 1}, None)
    assert (second.index, second.global_step) == (1, 11)
    assert m.state.get_value() == {"global_step": 12, "epoch": 1, "index": 2, "batch_idx": 0}
    assert type(first.index) is int and type(m.state.get_value()["index"]) is int


def test_next_epoch_next_batch_reset():
    m = MetadataManager(track_batches=True)
    for i in range(3):
        m.create_metadata(i)
    m.next_batch()
    m.next_epoch()
    assert m.state.get_value() == {"global_step": 3, "epoch": 1, "index": 0, "batch_idx": 1}
    m.reset()
    assert m.state.get_value() == {"global_step": 0, "epoch": 0, "index": 0, "batch_idx": 0}
    untracked = MetadataManager()
    untracked.next_batch()
    assert untracked.state.get_value()["batch_idx"] is None


def test_only_the_metadata_stream_is_used():
    rngs = nnx.Rngs(0, params=1)
    m = MetadataManager(rngs=rngs)
    assert m.create_metadata(0).rng_key is None
    assert int(rngs.default.count.get_value()) == 0 and int(rngs.params.count.get_value()) == 0


reads = st.lists(st.integers(0, 199), max_size=30)
impls = st.sampled_from(["threefry2x32", "rbg", "unsafe_rbg"])


@given(st.integers(0, 2**32 - 1), st.integers(1, 200), reads, impls)
def test_keys_are_bit_identical_to_calling_the_stream(seed, n, read_order, impl):
    m = MetadataManager(rngs=nnx.Rngs(metadata=jax.random.key(seed, impl=impl)))
    twin = nnx.Rngs(metadata=jax.random.key(seed, impl=impl))
    records = [m.create_metadata(i) for i in range(n)]
    expected = [twin.metadata() for _ in range(n)]
    for i in [r for r in read_order if r < n] + list(range(n)):  # any order, then all
        assert jax.random.key_impl(records[i].rng_key) == jax.random.key_impl(expected[i])
        np.testing.assert_array_equal(kd(records[i].rng_key), kd(expected[i]))


def test_copies_of_records_carry_their_derived_keys():
    m = MetadataManager(rngs=nnx.Rngs(metadata=2))
    twin = nnx.Rngs(metadata=2)
    records = [m.create_metadata(i) for i in range(3)]
    copies = [copy.deepcopy(records[0]), copy.copy(records[1]), copy.deepcopy(records[2])]
    for c in copies:
        np.testing.assert_array_equal(kd(c.rng_key), kd(twin.metadata()))
    assert copies[0] == records[0]


def test_observable_state_is_the_logical_position():
    rngs = nnx.Rngs(metadata=3)
    m = MetadataManager(rngs=rngs)
    for i in range(37):
        m.create_metadata(i)
        assert m.state.get_value()["index"] == i + 1
        assert int(rngs.metadata.count.get_value()) == i + 1
    state = nnx.state(m)
    assert state["state"].get_value()["global_step"] == 37
    assert int(state["rngs"]["metadata"]["count"].get_value()) == 37


def test_direct_stream_calls_and_records_interleave_like_one_stream():
    rngs = nnx.Rngs(metadata=11)
    twin = nnx.Rngs(metadata=11)
    m = MetadataManager(rngs=rngs)
    got = []
    for i in range(20):
        got.append(m.create_metadata(i).rng_key if i % 3 else rngs.metadata())
    for key in got:
        np.testing.assert_array_equal(kd(key), kd(twin.metadata()))


def test_a_new_stream_key_takes_effect_and_old_records_keep_theirs():
    rngs = nnx.Rngs(metadata=1)
    m = MetadataManager(rngs=rngs)
    old = m.create_metadata(0)
    rngs.metadata.key.set_value(jax.random.key(99))
    rngs.metadata.count.set_value(jax.numpy.uint32(5))
    new = m.create_metadata(1)
    np.testing.assert_array_equal(kd(new.rng_key), kd(jax.random.fold_in(jax.random.key(99), 5)))
    np.testing.assert_array_equal(kd(old.rng_key), kd(jax.random.fold_in(jax.random.key(1), 0)))


def test_inside_nnx_jit_the_manager_advances_like_outside():
    m = MetadataManager(rngs=nnx.Rngs(metadata=4))
    twin = nnx.Rngs(metadata=4)

    @nnx.jit
    def step(manager):
        return manager.create_metadata(0).rng_key

    key = step(m)
    np.testing.assert_array_equal(kd(key), kd(twin.metadata()))
    assert int(m.state.get_value()["index"]) == 1
    outside = m.create_metadata(1)
    assert outside.index == 1
    np.testing.assert_array_equal(kd(outside.rng_key), kd(twin.metadata()))


def _fields(r, i=None):
    pick = (lambda x: x) if i is None else (lambda x: None if x is None else x[i])
    return tuple(
        pick(getattr(r, n)) for n in ("index", "epoch", "global_step", "batch_idx", "shard_id")
    )


@given(
    st.integers(0, 64),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(0, 7),
    st.integers(0, 5),
    st.booleans(),
)
def test_batch_equals_a_loop_of_create_metadata(n, use_rngs, str_keys, shard, before, track):
    def make():
        rngs = nnx.Rngs(metadata=5) if use_rngs else None
        return MetadataManager(rngs=rngs, track_batches=track, shard_id=shard, initial_epoch=1)

    a, b = make(), make()
    for i in range(before):
        a.create_metadata(i), b.create_metadata(i)
    keys = [f"k{i}" for i in range(n)] if str_keys else list(range(100, 100 + n))
    batch = a.create_batch_metadata(keys, source_info={"s": 1})
    loop = [b.create_metadata(k, source_info={"s": 1}) for k in keys]
    assert a.state.get_value() == b.state.get_value()
    assert batch.index.shape == (n,) and batch.source_info == {"s": 1}
    for i, r in enumerate(loop):
        assert _fields(batch, i) == _fields(r)
        assert batch.record_key[i] == r.record_key
        if use_rngs:
            np.testing.assert_array_equal(kd(batch.rng_key[i]), kd(r.rng_key))
        else:
            assert batch.rng_key is None
    if use_rngs:
        assert int(a.rngs.metadata.count.get_value()) == int(b.rngs.metadata.count.get_value())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: MetadataManager(rngs=0), TypeError, "rngs must be an nnx.Rngs"),
        (lambda: MetadataManager(initial_epoch=1.0), TypeError, "initial_epoch"),
        (lambda: MetadataManager(initial_step=-1), ValueError, "initial_step"),
        (lambda: MetadataManager(track_batches=1), TypeError, "track_batches"),
        (lambda: MetadataManager(shard_id="0"), TypeError, "shard_id"),
        (lambda: MetadataManager().create_metadata("k" * 129), ValueError, "129 UTF-8"),
        (lambda: MetadataManager().create_metadata("a\x00"), ValueError, "NUL"),
        (lambda: MetadataManager().create_metadata("\ud800"), ValueError, "lone surrogate"),
        (lambda: MetadataManager().create_batch_metadata(["a", "b\udc80"]), ValueError, "surrog"),
        (lambda: MetadataManager().create_metadata(0, source_info=[1]), TypeError, "source_info"),
        (lambda: MetadataManager().create_batch_metadata([1, "a"]), TypeError, "all ints or all"),
        (lambda: MetadataManager().create_batch_metadata([1.5]), TypeError, "all ints or all"),
        (lambda: MetadataManager().create_batch_metadata(np.zeros((2, 2), int)), ValueError, "1-D"),
        (lambda: MetadataManager().create_batch_metadata([1, True]), TypeError, "all ints or all"),
        (lambda: MetadataManager().create_batch_metadata(["é" * 65]), ValueError, "130 UTF-8"),
    ],
)
def test_bad_input_is_refused_before_state_changes(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_refused_batch_leaves_the_manager_unchanged():
    rngs = nnx.Rngs(metadata=0)
    m = MetadataManager(rngs=rngs)
    with pytest.raises(ValueError):
        m.create_batch_metadata(["ok", "x" * 200])
    with pytest.raises(ValueError):
        m.create_metadata("x" * 200)
    assert m.state.get_value()["index"] == 0 and int(rngs.metadata.count.get_value()) == 0


@given(st.lists(st.one_of(st.just(0), st.integers(1, 40), st.just(-1)), max_size=40))
def test_any_mix_of_records_batches_and_stream_calls_is_one_stream(ops):
    """Records (0), batches of k (k > 0) and direct stream calls (-1), in any order, take
    consecutive keys of the one stream, read in any order afterwards."""
    m = MetadataManager(rngs=nnx.Rngs(metadata=11))
    twin = nnx.Rngs(metadata=11)
    got, expected = [], []
    for op in ops:
        if op == 0:
            got.append(m.create_metadata(0))
            expected.append(kd(twin.metadata()))
        elif op > 0:
            batch = m.create_batch_metadata(list(range(op)))
            got.extend(kd(batch.rng_key))
            expected.extend(kd(twin.metadata()) for _ in range(op))
        else:
            got.append(kd(m.rngs.metadata()))
            expected.append(kd(twin.metadata()))
    for i in reversed(range(len(got))):  # records' keys derived lazily, in reverse
        key = got[i] if isinstance(got[i], np.ndarray) else kd(got[i].rng_key)
        np.testing.assert_array_equal(key, expected[i])
