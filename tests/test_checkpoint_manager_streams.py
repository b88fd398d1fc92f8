"""A manager with many streams of every form: restored exactly, built like the constructor's,
and its streams decoded together exactly as one by one (values, refusals and messages)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
)
from datarax.checkpoint.integrity import dumps_document, loads_document, write_item_manifest
from datarax.checkpoint.manager_fields import check_stream
from datarax.checkpoint.manager_streams import decode_stream, decode_streams
from datarax.core._rng import is_key
from datarax.core.metadata import MetadataManager

_WHERE = "process_0.jsonl"


def _many(seed: int = 0) -> MetadataManager:
    """Streams of every form a manager holds: threefry, rbg and unsafe_rbg keys, a split
    stream (a key and a count of shape (3,)) and raw uint32 keys."""
    rngs = nnx.Rngs(
        **{f"s{i:02d}": seed + i for i in range(24)},
        metadata=seed + 100,
        rbg_a=jax.random.key(seed + 1, impl="rbg"),
        rbg_b=jax.random.key(seed + 2, impl="rbg"),
        unsafe=jax.random.key(seed + 3, impl="unsafe_rbg"),
        vmapped=jax.random.split(jax.random.key(seed + 4), 3),
    )
    manager = MetadataManager(rngs=rngs, track_batches=True, shard_id=5)
    for name in ("s01", "s02", "s03"):
        getattr(manager.rngs, name).key.set_value(jax.random.PRNGKey(seed + int(name[1:])))
    return manager


def _advance(manager: MetadataManager) -> None:
    for i in range(5):
        manager.create_metadata(record_key=i)
    manager.create_batch_metadata([7, 8, 9])
    manager.next_batch()
    for name in ("s07", "s02", "rbg_a", "rbg_a", "unsafe"):
        getattr(manager.rngs, name)()
    manager.rngs.vmapped.count.set_value(jnp.array([1, 2, 2**32 - 1], jnp.uint32))


def _streams(manager: MetadataManager) -> dict[str, tuple]:
    """Each stream exactly: key kind, impl, shape and bits; count dtype, shape and values."""
    out = {}
    for name, stream in manager.rngs.items():
        key, count = stream.key.get_value(), np.asarray(stream.count.get_value())
        typed = is_key(key)
        bits = np.asarray(jax.random.key_data(key) if typed else key)
        impl = str(jax.random.key_impl(key)) if typed else None
        out[name] = (typed, impl, key.shape, bits.dtype, bits.tolist(), count.dtype,
                     count.shape, count.tolist())  # fmt: skip
    return out


def _variables(manager: MetadataManager) -> list[nnx.Variable]:
    return jax.tree.leaves(manager, is_leaf=lambda x: isinstance(x, nnx.Variable))


@pytest.mark.parametrize("template", [False, True])
def test_many_streams_restore_exactly_and_build_the_constructor_s_manager(tmp_path, template):
    saved = _many()
    _advance(saved)
    handler = MetadataManagerCheckpointHandler()
    handler.save(epath.Path(tmp_path), MetadataManagerSave(saved))
    args = MetadataManagerRestore(_many(seed=50) if template else None)
    restored = handler.restore(epath.Path(tmp_path), args)
    again = handler.restore(epath.Path(tmp_path), args)

    assert _streams(restored) == _streams(saved)
    assert restored.state.get_value() == saved.state.get_value()
    assert (restored.shard_id, restored.track_batches) == (5, True)
    # The same pytree, graph and Variables as the saved manager, built by the constructor.
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(saved)
    assert nnx.graphdef(restored) == nnx.graphdef(saved)
    assert [type(v) for v in _variables(restored)] == [type(v) for v in _variables(saved)]
    assert [v.get_metadata() for v in _variables(restored)] == [
        v.get_metadata() for v in _variables(saved)
    ]
    # Two restores share no Variable (nor with the template).
    ids = {id(v) for v in _variables(restored)}
    assert not ids & {id(v) for v in _variables(again)}
    if args.manager is not None:
        assert not ids & {id(v) for v in _variables(args.manager)}
    # It runs like the saved one: records, batches, nnx.jit, split/merge, any stream.
    expected = saved.create_batch_metadata([1, 2, 3])
    got = nnx.jit(lambda m: m.create_batch_metadata([1, 2, 3]))(restored)
    merged = nnx.merge(*nnx.split(again))
    for batch in (got, merged.create_batch_metadata([1, 2, 3])):
        np.testing.assert_array_equal(np.asarray(batch.index), expected.index)
        np.testing.assert_array_equal(
            jax.random.key_data(batch.rng_key), jax.random.key_data(expected.rng_key)
        )
    for name in ("s00", "s01", "rbg_b", "unsafe"):
        np.testing.assert_array_equal(
            jax.random.key_data(getattr(restored.rngs, name)()),
            jax.random.key_data(getattr(saved.rngs, name)()),
        )
    assert _streams(restored) == _streams(saved)


_DRAWN = ("s00", "s01", "s02", "s23", "metadata", "rbg_a", "unsafe")
"""Streams drawn from directly: typed threefry, raw uint32, rbg and unsafe_rbg keys."""


def _draw(manager: MetadataManager) -> list[list[int]]:
    """Records, a batch and a key from each of ``_DRAWN``, as key bits."""
    keys = [manager.create_metadata(record_key=i).rng_key for i in range(3)]
    keys.append(manager.create_batch_metadata([4, 5]).rng_key)
    keys.extend(getattr(manager.rngs, name)() for name in _DRAWN)
    return [np.asarray(jax.random.key_data(k) if is_key(k) else k).tolist() for k in keys]


@pytest.mark.parametrize("template", [False, True])
def test_two_restores_of_one_step_share_nothing_and_advance_independently(tmp_path, template):
    saved = _many()
    _advance(saved)
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(1, args=ocp.args.Composite(m=MetadataManagerSave(saved)))
        mngr.wait_until_finished()
        restore = lambda: ocp.args.Composite(  # noqa: E731
            m=MetadataManagerRestore(_many(seed=50) if template else None)
        )
        a, b = mngr.restore(1, args=restore())["m"], mngr.restore(1, args=restore())["m"]
    assert _streams(a) == _streams(b) == _streams(saved)
    # No Variable, stream, key or count is shared between the two managers.
    assert not {id(v) for v in _variables(a)} & {id(v) for v in _variables(b)}
    assert not {id(s) for _, s in a.rngs.items()} & {id(s) for _, s in b.rngs.items()}
    for (_, sa), (_, sb) in zip(a.rngs.items(), b.rngs.items(), strict=True):
        assert sa.key.get_value() is not sb.key.get_value()
        assert not np.shares_memory(sa.count.get_value(), sb.count.get_value())
    before = _streams(b)
    drawn = _draw(a)  # a advances: b stays at the saved position...
    assert _streams(b) == before and b.state.get_value() == saved.state.get_value()
    assert _streams(a) != before
    assert _draw(b) == drawn == _draw(saved)  # ...and then goes exactly as a (and saved) went
    assert _streams(a) == _streams(b) == _streams(saved)


def test_a_damaged_stream_among_many_is_refused_naming_it(tmp_path):
    directory = epath.Path(tmp_path)
    saved = _many()
    MetadataManagerCheckpointHandler().save(directory, MetadataManagerSave(saved))
    path = directory / "process_0.jsonl"
    doc = loads_document(path.read_bytes(), str(path))
    rngs = dict(doc["rngs"])
    rngs["s17"] = {**rngs["s17"], "count": [2**32]}
    rngs["s20"] = {**rngs["s20"], "impl": "nope"}  # a later stream: the first one is named
    path.write_bytes(dumps_document({**doc, "rngs": rngs}))
    write_item_manifest(directory)
    with pytest.raises(MetadataCheckpointError, match=r"process_0.jsonl: rngs\['s17'\].count\[0\]"):
        MetadataManagerCheckpointHandler().restore(directory, MetadataManagerRestore())


# ---------------------------------------------------------------------------------------
# Decoded together or one by one: the same streams, or the same refusal.

_FORMS = [
    {"typed": True, "impl": "threefry2x32", "key_shape": [], "key_data": [0, 7],
     "count_shape": [], "count": [3]},
    {"typed": True, "impl": "rbg", "key_shape": [], "key_data": [1, 2, 3, 4],
     "count_shape": [], "count": [0]},
    {"typed": True, "impl": "threefry2x32", "key_shape": [2], "key_data": [0, 1, 2, 3],
     "count_shape": [2], "count": [4, 2**32 - 1]},
    {"typed": False, "impl": None, "key_shape": [2], "key_data": [0, 5],
     "count_shape": [], "count": [9]},
]  # fmt: skip

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**34), 2**34) | st.floats(allow_nan=False)
    | st.text(max_size=6) | st.sampled_from(["threefry2x32", "rbg", "unsafe_rbg"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


def _one_by_one(rngs: dict) -> dict:
    checked = {name: check_stream(_WHERE, name, entry) for name, entry in rngs.items()}
    return {name: decode_stream(_WHERE, name, s) for name, s in checked.items()}


def _outcome(decode, rngs: dict) -> tuple:
    try:
        streams = decode(rngs)
    except Exception as e:  # the kind and message are compared
        return ("refused", type(e), str(e))
    out = []
    for name, s in streams.items():
        typed = is_key(s.key)
        bits = np.asarray(jax.random.key_data(s.key) if typed else s.key)
        impl = str(jax.random.key_impl(s.key)) if typed else None
        out.append((name, typed, impl, s.key.shape, bits.dtype, bits.tolist(),
                    type(s.count), s.count.dtype, s.count.shape, s.count.tolist()))  # fmt: skip
    return ("decoded", out)


@given(data=st.data())
def test_streams_decoded_together_equal_streams_decoded_one_by_one(data):
    count = data.draw(st.integers(1, 9))
    forms = data.draw(st.lists(st.sampled_from(range(len(_FORMS))), min_size=count,
                               max_size=count))  # fmt: skip
    rngs = {f"s{i}": dict(_FORMS[f]) for i, f in enumerate(forms)}
    for _ in range(data.draw(st.integers(0, 2))):
        name = data.draw(st.sampled_from(sorted(rngs)))
        what = data.draw(st.sampled_from([*_FORMS[0], "entry", "name", "element"]))
        if what == "entry":
            rngs[name] = data.draw(_json)
        elif what == "name":
            rngs[data.draw(st.sampled_from(["_x", "1a", "a-b", "", "ok"]))] = rngs.pop(name)
        elif what == "element" and type(rngs[name]) is dict:
            field = data.draw(st.sampled_from(["key_shape", "key_data", "count", "count_shape"]))
            if type(rngs[name].get(field)) is list:  # one more value, most often a uint32
                value = data.draw(st.integers(0, 2**32 - 1) | _json)
                rngs[name] = {**rngs[name], field: [*rngs[name][field], value]}
        elif type(rngs[name]) is dict:
            rngs[name] = {**rngs[name], what: data.draw(_json)}
    assert _outcome(lambda r: decode_streams(_WHERE, r), rngs) == _outcome(_one_by_one, rngs)


@pytest.mark.parametrize("streams", [5, 16, 17, 150])  # one call; one full; a padded last
def test_keys_decoded_together_are_the_keys_of_their_data(streams):
    entry = {"typed": True, "impl": "threefry2x32", "key_shape": [], "count_shape": [],
             "count": [0]}  # fmt: skip
    rngs = {f"s{i}": {**entry, "key_data": [i, 2 * i + 1]} for i in range(streams)}
    streams = decode_streams(_WHERE, rngs)
    assert list(streams) == list(rngs)
    for i, s in enumerate(streams.values()):
        expected = jax.random.wrap_key_data(jnp.array([i, 2 * i + 1], jnp.uint32))
        assert s.key.dtype == expected.dtype and s.key.shape == ()
        np.testing.assert_array_equal(jax.random.key_data(s.key), jax.random.key_data(expected))
        assert type(s.count) is np.ndarray and s.count.dtype == np.uint32 and s.count.shape == ()


@pytest.mark.parametrize(
    "change",
    [
        {"key_shape": [2], "key_data": [0, 1, 2, 3, 4]},  # not whole keys of its shape
        {"key_shape": [0], "key_data": [0, 1]},  # no keys, but data
        {"key_shape": [], "key_data": []},
        {"key_data": [0, 1, 2]},  # not a threefry2x32 key
        {"impl": "nope"},
        {"typed": False, "impl": None, "key_shape": [3], "key_data": [1, 2]},
        {"count_shape": [2], "count": [1]},
        {"key_shape": [2**33], "key_data": [0, 1]},
        {"count": [True]},
        {"typed": 1},
    ],
)
def test_an_odd_stream_among_many_is_decoded_or_refused_as_one_by_one(change):
    rngs = {f"s{i}": dict(_FORMS[0]) for i in range(6)}
    rngs["s3"] = {**rngs["s3"], **change}
    together = _outcome(lambda r: decode_streams(_WHERE, r), rngs)
    assert together == _outcome(_one_by_one, rngs)
    assert together[0] == "refused" and together[1] is MetadataCheckpointError
    assert together[2].startswith(f"{_WHERE}: rngs['s3']")
