"""RecordMetadata: a frozen dataclass that works with jax.tree_util and jax.jit."""

import dataclasses

import jax
import numpy as np
import pytest

from datarax.core.metadata import RecordMetadata


def test_fields_and_defaults_follow_the_seed_signature():
    names = [f.name for f in dataclasses.fields(RecordMetadata)]
    assert names == [
        "index",
        "record_key",
        "rng_key",
        "epoch",
        "global_step",
        "batch_idx",
        "shard_id",
        "source_info",
    ]
    r = RecordMetadata(index=1, record_key="k")
    assert (r.rng_key, r.epoch, r.global_step, r.batch_idx, r.shard_id, r.source_info) == (
        None,
        0,
        0,
        None,
        None,
        None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.index = 2  # type: ignore[misc]


@pytest.mark.parametrize("record_key", [7, "files/a.png", (3, 1024), None, np.arange(3)])
def test_tree_round_trip_for_every_kind_of_record_key(record_key):
    r = RecordMetadata(
        index=2,
        record_key=record_key,
        rng_key=jax.random.key(1),
        epoch=1,
        global_step=5,
        batch_idx=0,
        shard_id=3,
        source_info={"f": (1, 2)},
    )
    leaves, treedef = jax.tree.flatten(r)
    assert jax.tree.unflatten(treedef, leaves) == r
    through_jit = jax.jit(lambda x: x)(r)
    # Leaves come back from jit as arrays, like any leaf; str keys come back as str.
    if isinstance(record_key, str) or record_key is None:
        assert through_jit.record_key == record_key
    else:
        assert jax.tree.all(jax.tree.map(np.array_equal, through_jit.record_key, record_key))
    np.testing.assert_array_equal(
        jax.random.key_data(through_jit.rng_key), jax.random.key_data(r.rng_key)
    )


def test_string_record_key_is_a_uint8_leaf():
    r = RecordMetadata(index=0, record_key="abc")
    leaves = jax.tree.leaves(r)
    assert leaves[1].dtype == np.uint8 and leaves[1].shape == (128,)
    assert jax.tree.structure(r) == jax.tree.structure(RecordMetadata(index=5, record_key="x"))


def test_split_rng():
    key = jax.random.key(9)
    parts = RecordMetadata(index=0, record_key=0, rng_key=key).split_rng(3)
    np.testing.assert_array_equal(
        jax.random.key_data(parts[2]), jax.random.key_data(jax.random.split(key, 3)[2])
    )
    assert RecordMetadata(index=0, record_key=0).split_rng() == [None, None]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"index": 1.0}, TypeError, "index"),
        ({"index": 0, "epoch": -2}, ValueError, "epoch"),
        ({"index": 0, "record_key": "x" * 129}, ValueError, "129 UTF-8 bytes"),
        ({"index": 0, "source_info": "text"}, TypeError, "source_info"),
    ],
)
def test_bad_input_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        RecordMetadata(**{"record_key": 0, **kwargs})
