"""The pure codecs: source_info and Metadata pytrees <-> JSON documents (no files)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_oracle import assert_exact
from hypothesis import given
from hypothesis import strategies as st

from datarax.checkpoint import MetadataCheckpointError
from datarax.checkpoint.codec import decode_item, encode_item
from datarax.checkpoint.integrity import dumps_document, loads_document
from datarax.checkpoint.source_info import decode_source_info, encode_source_info
from datarax.core.metadata import Metadata

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
keys = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.text(max_size=4)
    | st.tuples(st.integers(0, 3), st.text(max_size=2))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def _typed(value):
    """``value`` with every part's type attached (``1 == True == 1.0`` in Python)."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_typed(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex())  # tells -0.0 from 0.0
    return (type(value).__name__, value)


def _through_json(data):
    return json.loads(json.dumps(data, allow_nan=False))


@given(st.dictionaries(keys, values, max_size=5))
def test_source_info_round_trips_exactly(info):
    decoded = decode_source_info(_through_json(encode_source_info(info)))
    assert _typed(decoded) == _typed(info)


@given(values)
def test_any_supported_value_round_trips_exactly(value):
    assert _typed(decode_source_info(_through_json(encode_source_info(value)))) == _typed(value)


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"files": ["a", "b", "c", {"d"}]}, "source_info['files'][3]"),
        ({"x": (1, 2, b"raw")}, "source_info['x'][2]"),
        ({"x": [math.inf]}, "source_info['x'][0]"),
        ({"x": {"y": -math.nan}}, "source_info['x']['y']"),
        ({3: np.float32(1.0)}, "source_info[3]"),
        ({"o": Opaque()}, "source_info['o']"),
        ({"s": frozenset()}, "source_info['s']"),
        ({"b": bytearray(b"x")}, "source_info['b']"),
    ],
)
def test_values_that_cannot_round_trip_are_refused_with_their_path(value, path):
    with pytest.raises(MetadataCheckpointError) as err:
        encode_source_info(value)
    assert f"Cannot save {path}:" in str(err.value)


def test_subclasses_and_cycles_are_refused():
    from collections import OrderedDict

    with pytest.raises(MetadataCheckpointError, match=r"a OrderedDict .*; use a plain dict"):
        encode_source_info({"o": OrderedDict()})
    loop: list = []
    loop.append(loop)
    with pytest.raises(
        MetadataCheckpointError, match=r"source_info\['l'\]\[0\]: .*contains itself"
    ):
        encode_source_info({"l": loop})


def test_tags_are_not_confused_with_user_keys():
    info = {"$tuple": [1, 2], "$dict": [], "plain": {"$x": 1}}
    assert _typed(decode_source_info(_through_json(encode_source_info(info)))) == _typed(info)


@pytest.mark.parametrize("bad", [{"$tuple": 1}, {"$set": []}, {"$dict": [[1]]}, b"x"])
def test_malformed_encodings_are_errors(bad):
    with pytest.raises(MetadataCheckpointError, match="not an encoded source_info"):
        decode_source_info(bad)


@pytest.mark.parametrize(
    "flat",
    [
        [f"f{i}" for i in range(300)] + ["\u00e9\U0001f600"],
        [*range(-150, 150), 2**70, -(2**70)],
        [0.5, -0.0, 1e308, 5e-324] * 50,
        [True, False] * 100,
        [None] * 100,
        {f"k{i}$": f"v{i}" for i in range(200)} | {"a\x00$b": "c", "\U0001f600": "\x00"},
        {f"k{i}": i for i in range(200)},
    ],
)
def test_large_flat_containers_round_trip_exactly(flat):
    """Flat lists, tuples and dicts of one scalar type take a fast path: same result."""
    for value in (flat, tuple(flat) if isinstance(flat, list) else {"inner": flat}):
        encoded = encode_source_info(value)
        assert encoded is not value
        assert _typed(decode_source_info(_through_json(encoded))) == _typed(value)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ([f"f{i}" for i in range(100)] + ["\ud83d\ude00"], "source_info[100]"),
        ([1.0] * 100 + [math.nan], "source_info[100]"),
        ([1] * 100 + [10**5000], "source_info[100]"),
        ({f"k{i}": "v" for i in range(100)} | {"x": "\ud83d\ude00"}, "source_info['x']"),
    ],
)
def test_a_bad_value_in_a_large_flat_container_is_refused_with_its_path(value, path):
    with pytest.raises(MetadataCheckpointError) as err:
        encode_source_info(value)
    assert f"Cannot save {path}" in str(err.value)


def test_a_dollar_key_among_many_plain_keys_is_tagged_and_refused_untagged():
    info = {f"k{i}": i for i in range(100)} | {"$tuple": "x"}
    encoded = encode_source_info(info)
    assert set(encoded) == {"$dict"}
    assert _typed(decode_source_info(_through_json(encoded))) == _typed(info)
    with pytest.raises(MetadataCheckpointError, match="not an encoded source_info"):
        decode_source_info({f"k{i}": i for i in range(100)} | {"$x": 1})


# --- Metadata pytrees ------------------------------------------------------------------------

counters = (
    st.integers(0, 2**40)
    | st.integers(0, 2**31 - 1).map(np.int32)
    | st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=3).map(
        lambda v: np.asarray(v, np.int32)
    )
)
optional = st.none() | counters
rng_keys = st.none() | st.tuples(
    st.integers(0, 2**32 - 1), st.sampled_from(["threefry2x32", "rbg", "unsafe_rbg"]), st.booleans()
).map(lambda t: jax.random.key(t[0], impl=t[1]) if t[2] else jax.random.key_data(
    jax.random.key(t[0], impl=t[1])))  # fmt: skip
metadata = st.builds(
    Metadata,
    index=counters,
    epoch=counters,
    global_step=counters,
    batch_idx=optional,
    shard_id=optional,
    rng_key=rng_keys,
    key=st.none() | st.text(max_size=10).filter(lambda s: "\x00" not in s),
    source_info=st.none() | st.dictionaries(keys, values, max_size=3),
)
trees = st.recursive(
    metadata,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
    ),
    max_leaves=4,
)


@given(trees, st.sampled_from([None, -1]))
def test_metadata_trees_round_trip_exactly_through_a_document(tree, threshold):
    encoded = encode_item(tree)
    assert encoded.global_arrays == {}
    doc, parts = encoded.finish() if threshold is None else encoded.finish(threshold)
    assert ("blob" in doc) == (threshold == -1 and bool(encoded.host_arrays))
    blob = bytearray(b"".join(bytes(p) for p in parts)) if "blob" in doc else None
    doc = loads_document(dumps_document(doc), "memory")
    assert_exact(decode_item(doc, "memory", blob=blob), tree)
    assert_exact(decode_item(doc, "memory", tree, blob=blob), tree)


def test_a_jax_counter_stays_a_jax_array_and_ints_stay_ints():
    m = Metadata(index=jnp.int32(3), epoch=2, global_step=np.int64(1))
    out = decode_item(encode_item(m).finish()[0], "memory")
    assert isinstance(out.index, jax.Array) and out.index.dtype == jnp.int32
    assert type(out.epoch) is int
    assert type(out.global_step) is np.int64


PROGRESSIONS = {
    "arange": (np.arange(1000, dtype=np.int32) + 7, [7, 1]),
    "constant": (np.full((4, 8), 3, np.int16), [3, 0]),
    "wrapping int8": (np.arange(300).astype(np.int8), [0, 1]),
    "descending uint8": (np.arange(40, 0, -1).astype(np.uint8), None),  # step -1 fits no uint8
    "int64 beyond 2**53": (np.arange(20, dtype=np.int64) * 3 + 2**62, [2**62, 3]),
    "almost": (np.concatenate([np.arange(99), [0]]).astype(np.int32), None),
    "too short": (np.arange(15, dtype=np.int32), None),
    "batches of 256": (np.arange(1000, dtype=np.int32) // 256 + 9, [9, 1, 256]),
    "repeated, wrapping uint8": ((np.arange(2000) // 3 * 5 + 250).astype(np.uint8), [250, 5, 3]),
    "repeated, then not": (np.concatenate([np.arange(40) // 4, [7]]).astype(np.int64), None),
    "long, wrapping int16": ((np.arange(200_000) * 3 - 7).astype(np.int16), [-7, 3]),
    "long, repeated, wrapping int8": (
        (np.arange(300_000) // 5 - 100).astype(np.int8),
        [-100, 1, 5],
    ),
    "uint64 beyond 2**63": (
        np.arange(70_000, dtype=np.uint64) * np.uint64(5) + np.uint64(2**64 - 9),
        [2**64 - 9, 5],
    ),
    "long, one element off": (np.where(np.arange(150_000) == 140_000, 0, np.arange(150_000)), None),
    "long runs, one element off": (
        np.where(np.arange(150_000) == 149_999, 0, np.arange(150_000) // 1000),
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(PROGRESSIONS))
def test_integer_progressions_are_saved_as_fills_and_come_back_exactly(name):
    array, fill = PROGRESSIONS[name]
    item = Metadata(index=array, rng_key=np.arange(2, dtype=np.uint32))
    doc, parts = encode_item(item).finish(threshold=-1)
    assert doc["nodes"][0]["fields"]["index"]["array"].get("fill") == fill
    blob = bytearray(b"".join(bytes(p) for p in parts)) if "blob" in doc else None
    out = decode_item(loads_document(dumps_document(doc), "memory"), "memory", blob=blob)
    assert_exact(out, item)
