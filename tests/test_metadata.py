"""Metadata: the pytree contract, key encoding and every method of SPEC §1."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datarax.core._keys import ABSTRACT_KEY
from datarax.core.metadata import MAX_KEY_LENGTH, Metadata

counters = st.integers(min_value=0, max_value=2**31 - 1)
optional = st.none() | counters
keys = st.none() | st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    max_size=32,
)
infos = st.none() | st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5))


@st.composite
def metadata(draw):
    seed = draw(st.none() | st.integers(0, 2**31 - 1))
    return Metadata(
        index=draw(counters),
        epoch=draw(counters),
        global_step=draw(counters),
        batch_idx=draw(optional),
        shard_id=draw(optional),
        rng_key=None if seed is None else jax.random.key(seed),
        source_info=draw(infos),
        key=draw(keys),
    )


@given(metadata())
def test_flatten_unflatten_round_trips_exactly(m):
    leaves, treedef = jax.tree.flatten(m)
    back = jax.tree.unflatten(treedef, leaves)
    assert back == m
    assert back.source_info is m.source_info
    assert [type(x) for x in jax.tree.leaves(back)] == [type(x) for x in leaves]


@given(metadata())
def test_leaves_are_the_non_none_dynamic_fields_in_order(m):
    names = ["index", "epoch", "global_step", "batch_idx", "shard_id", "rng_key", "_encoded_key"]
    expected = [getattr(m, n) for n in names if getattr(m, n) is not None]
    leaves = jax.tree.leaves(m)
    assert len(leaves) == len(expected)
    assert all(a is b for a, b in zip(leaves, expected, strict=True))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(m)]
    assert paths == [f".{n}" for n in names if getattr(m, n) is not None]


def test_source_info_is_static_aux_data():
    a = Metadata(index=1, source_info={"file": "a"})
    b = Metadata(index=2, source_info={"file": "a"})
    c = Metadata(index=1, source_info={"file": "b"})
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.structure(a) != jax.tree.structure(c)
    # Same value, other types: a different structure, so a cache hit never swaps them.
    assert jax.tree.structure(Metadata(source_info={"n": 1})) != jax.tree.structure(
        Metadata(source_info={"n": 1.0})
    )


def test_python_int_counters_stay_python_ints():
    m = Metadata(index=3, epoch=1, global_step=9, batch_idx=2, shard_id=0)
    bumped = jax.tree.map(lambda x: x + 1 if isinstance(x, int) else x, m)
    assert (bumped.index, bumped.epoch, bumped.global_step) == (4, 2, 10)
    assert type(bumped.index) is int
    assert type(m.increment_step().global_step) is int


def test_array_counters_stay_arrays():
    m = Metadata(index=jnp.arange(4), epoch=jnp.zeros(4, jnp.int32))
    assert isinstance(m.increment_epoch().epoch, jax.Array)
    np.testing.assert_array_equal(m.increment_epoch().epoch, np.ones(4))


def test_key_is_encoded_as_uint8_128():
    m = Metadata(key="héllo")
    assert isinstance(m._encoded_key, jax.Array)
    assert m._encoded_key.dtype == jnp.uint8 and m._encoded_key.shape == (MAX_KEY_LENGTH,)
    raw = "héllo".encode()
    assert bytes(np.asarray(m._encoded_key)[: len(raw)]) == raw
    assert not np.asarray(m._encoded_key)[len(raw) :].any()
    assert m.entry_key == "héllo"
    assert Metadata().entry_key is None
    assert Metadata(key="").entry_key == ""


def test_keys_of_different_text_share_a_treedef():
    assert jax.tree.structure(Metadata(key="a")) == jax.tree.structure(Metadata(key="b" * 128))


def test_key_of_128_bytes_is_accepted_and_129_is_refused():
    assert Metadata(key="é" * 64).entry_key == "é" * 64  # 128 UTF-8 bytes
    with pytest.raises(ValueError, match="129 UTF-8 bytes"):
        Metadata(key="a" * 129)
    with pytest.raises(ValueError, match="130 UTF-8 bytes"):
        Metadata(index=0).replace(key="é" * 65)


def test_key_with_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        Metadata(key="a\x00b")


def test_key_with_a_lone_surrogate_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"lone surrogate \('\\udc80' at position 1\)"):
        Metadata(key="a\udc80b")


def test_entry_key_inside_a_trace_says_it_cannot_decode():
    seen = []

    @jax.jit
    def f(m):
        seen.append(m.entry_key)
        return m.index

    f(Metadata(key="abc"))
    assert seen == ["<traced key: cannot be decoded inside a JAX transformation>"]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("index", 1.5, TypeError),
        ("epoch", "3", TypeError),
        ("global_step", True, TypeError),
        ("batch_idx", jnp.zeros(2, jnp.float32), TypeError),
        ("shard_id", 2.0, TypeError),
        ("index", -1, ValueError),
        ("index", None, TypeError),
        ("rng_key", np.zeros(2, np.int64), TypeError),
        ("source_info", ["a"], TypeError),
    ],
)
def test_bad_fields_are_refused_with_what_is_accepted(field, value, error):
    with pytest.raises(error, match=field):
        Metadata(**{field: value})


def test_instances_are_frozen_and_methods_return_new_instances():
    m = Metadata(index=1, epoch=2, global_step=3, batch_idx=None, rng_key=jax.random.key(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.index = 5  # type: ignore[misc]
    names = [f.name for f in dataclasses.fields(m)]
    before = {n: getattr(m, n) for n in names}
    key_data = np.asarray(jax.random.key_data(m.rng_key))
    results = [
        m.replace(index=9),
        m.next_rng(),
        m.increment_step(),
        m.increment_epoch(),
        m.increment_batch(),
        m.with_shard(3),
        m.merge(Metadata(index=4)),
    ]
    assert all(isinstance(r, Metadata) and r is not m for r in results)
    assert all(getattr(m, n) is before[n] for n in names)  # no field rebound
    np.testing.assert_array_equal(jax.random.key_data(m.rng_key), key_data)
    assert (m.index, m.epoch, m.global_step, m.batch_idx, m.shard_id) == (1, 2, 3, None, None)


def test_replace_reencodes_key_and_record_key():
    m = Metadata(key="old")
    assert m.replace(key="new").entry_key == "new"
    assert m.replace(record_key="newer").entry_key == "newer"
    assert m.replace(record_key=None).entry_key is None
    assert m.replace(index=3).entry_key == "old"
    with pytest.raises(TypeError, match="not both"):
        m.replace(key="a", record_key="b")
    with pytest.raises(TypeError, match="no field"):
        m.replace(indx=3)


def test_split_rng_and_next_rng():
    key = jax.random.key(42)
    m = Metadata(rng_key=key)
    parts = m.split_rng(3)
    expected = jax.random.split(key, 3)
    assert len(parts) == 3
    for got, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))
    nxt = m.next_rng()
    np.testing.assert_array_equal(
        jax.random.key_data(nxt.rng_key), jax.random.key_data(jax.random.split(key, 2)[1])
    )
    assert Metadata().split_rng(4) == [None] * 4
    plain = Metadata()
    assert plain.next_rng() is plain
    with pytest.raises(ValueError, match="num"):
        m.split_rng(-1)


def test_raw_keys_split_like_typed_ones():
    raw = jax.random.PRNGKey(3)
    m = Metadata(rng_key=raw)
    np.testing.assert_array_equal(m.next_rng().rng_key, jax.random.split(raw, 2)[1])


def test_counter_methods():
    m = Metadata(index=5, epoch=1, global_step=10, batch_idx=7)
    assert m.increment_step().global_step == 11
    e = m.increment_epoch()
    assert (e.epoch, e.batch_idx, e.index) == (2, 0, 5)
    assert m.increment_batch().batch_idx == 8
    assert Metadata().increment_batch().batch_idx == 0
    assert m.with_shard(4).shard_id == 4


def test_to_dict_and_from_dict_round_trip_without_mutating_input():
    m = Metadata(
        index=1,
        epoch=2,
        global_step=3,
        batch_idx=4,
        shard_id=5,
        rng_key=jax.random.key(1),
        source_info={"a": 1},
        key="k",
    )
    d = m.to_dict()
    assert list(d) == [
        "index",
        "epoch",
        "global_step",
        "batch_idx",
        "shard_id",
        "rng_key",
        "record_key",
        "source_info",
    ]
    assert d["record_key"] == "k"
    copy = dict(d)
    assert Metadata.from_dict(d) == m
    assert list(d) == list(copy) and all(d[k] is copy[k] for k in d)  # d is untouched
    alias = {**d}
    alias["key"] = alias.pop("record_key")
    assert Metadata.from_dict(alias) == m
    with pytest.raises(TypeError, match="Unknown"):
        Metadata.from_dict({"index": 1, "bogus": 2})


def test_merge_prefers_non_zero_and_non_none_values_of_other():
    key_a, key_b = jax.random.key(1), jax.random.key(2)
    a = Metadata(
        index=1,
        epoch=2,
        global_step=3,
        batch_idx=4,
        shard_id=5,
        rng_key=key_a,
        source_info={"a": 1},
        key="a",
    )
    b = Metadata(index=0, epoch=7, global_step=0, batch_idx=None, shard_id=6)
    merged = a.merge(b)
    assert (merged.index, merged.epoch, merged.global_step) == (1, 7, 3)
    assert (merged.batch_idx, merged.shard_id) == (4, 6)
    assert merged.rng_key is key_a and merged.entry_key == "a"
    assert merged.source_info == {"a": 1}
    c = a.merge(Metadata(rng_key=key_b, key="b", source_info={"b": 2}))
    assert c.rng_key is key_b and c.entry_key == "b" and c.source_info == {"b": 2}
    assert a.merge(None) is a


def test_merge_of_array_counters_is_element_wise():
    a = Metadata(index=jnp.array([1, 2, 3]))
    b = Metadata(index=jnp.array([0, 9, 0]))
    np.testing.assert_array_equal(a.merge(b).index, [1, 9, 3])


def test_equality_is_exact():
    assert Metadata(index=1) == Metadata(index=1)
    assert Metadata(index=1) != Metadata(index=np.int64(1))
    assert Metadata(rng_key=jax.random.key(0)) != Metadata(rng_key=jax.random.key(1))
    assert Metadata(key="a") != Metadata(key="b")


def test_a_batched_metadata_has_a_repr_and_a_dict_that_round_trips():
    texts = np.array(["a", "bé", "", "k" * 128])
    m = Metadata(
        index=np.arange(4),
        rng_key=jax.random.split(jax.random.key(0), 4),
        key=texts,
        source_info={"s": 1},
    )
    assert m._encoded_key.shape == (4, MAX_KEY_LENGTH)
    np.testing.assert_array_equal(m.entry_key, texts)
    assert "key=array(['a', 'bé', ''," in repr(m) and repr(m).startswith("Metadata(index=array(")
    d = m.to_dict()
    np.testing.assert_array_equal(d["record_key"], texts)
    assert Metadata.from_dict(d) == m
    encoded = Metadata(_encoded_key=m._encoded_key.reshape(2, 2, MAX_KEY_LENGTH))
    assert encoded.entry_key.shape == (2, 2) and encoded.to_dict()["record_key"][1, 1] == "k" * 128
    assert Metadata(_encoded_key=np.zeros((0, MAX_KEY_LENGTH), np.uint8)).entry_key.shape == (0,)


@pytest.mark.parametrize("key", ["a", np.array(["a", "b"])], ids=["one key", "a batch"])
def test_an_abstract_or_mapped_metadata_has_a_repr_and_a_dict(key):
    """What jax.eval_shape returns (ShapeDtypeStruct leaves), or a tree.map to shapes, is
    a Metadata too: printing it must work, as a record's does."""
    abstract = jax.eval_shape(lambda: Metadata(index=1, key=key, rng_key=jax.random.key(0)))
    assert "ShapeDtypeStruct" in repr(abstract)
    assert abstract.entry_key == abstract.to_dict()["record_key"] == ABSTRACT_KEY
    shapes = jax.tree.map(np.shape, Metadata(index=np.arange(2), key=key))
    assert "_encoded_key=" in repr(shapes) and "index=(2,)" in repr(shapes)


@pytest.mark.parametrize(
    ("row", "byte", "value"),
    [(1, 100, 1), (0, 0, 0xFF), (2, 0, 0x80), (1, 1, 0xC3)],
    ids=["byte after the padding", "not UTF-8", "continuation first", "cut character"],
)
def test_an_encoded_key_that_no_text_encodes_to_is_refused(row, byte, value):
    encoded = np.asarray(Metadata(key=np.array(["a", "b", "c"]))._encoded_key).copy()
    encoded[row, byte] = value
    with pytest.raises(ValueError, match=f"Encoded record key {row} is not a zero-padded"):
        Metadata(_encoded_key=encoded)
    with pytest.raises(ValueError, match="Encoded record key 0 is not"):
        Metadata(_encoded_key=encoded[row])
