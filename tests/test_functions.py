"""create_metadata, split_rng_tree, batch_metadata and update_metadata_batch."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datarax.core.metadata import (
    Metadata,
    batch_metadata,
    create_metadata,
    split_rng_tree,
    update_metadata_batch,
)


def key_data(k):
    return np.asarray(jax.random.key_data(k))


def test_create_metadata_fields_and_seed():
    m = create_metadata(
        index=1,
        epoch=2,
        global_step=3,
        batch_idx=4,
        shard_id=5,
        record_key="r",
        source_info={"s": 1},
        seed=7,
    )
    assert (m.index, m.epoch, m.global_step, m.batch_idx, m.shard_id) == (1, 2, 3, 4, 5)
    assert m.entry_key == "r" and m.source_info == {"s": 1}
    np.testing.assert_array_equal(key_data(m.rng_key), key_data(jax.random.key(7)))
    given = jax.random.key(1)
    assert create_metadata(rng_key=given, seed=7).rng_key is given
    assert create_metadata().rng_key is None


def test_split_rng_tree_names():
    key = jax.random.key(3)
    tree = split_rng_tree(create_metadata(rng_key=key), 4)
    assert list(tree) == ["a", "b", "key_2", "key_3"]
    expected = jax.random.split(key, 4)
    for got, want in zip(tree.values(), expected, strict=True):
        np.testing.assert_array_equal(key_data(got), key_data(want))
    assert list(split_rng_tree(create_metadata(rng_key=key))) == ["a", "b"]
    assert list(split_rng_tree(create_metadata(rng_key=key), 1)) == ["a"]
    assert split_rng_tree(create_metadata(), 3) == {"key_0": None, "key_1": None, "key_2": None}


def test_batch_metadata_combines():
    assert batch_metadata([]) == Metadata()
    key = jax.random.key(0)
    items = [
        Metadata(index=4, epoch=1, global_step=10, rng_key=key, key="first", source_info={"a": 1}),
        Metadata(index=5, epoch=3, global_step=12, batch_idx=2, key="second"),
        Metadata(index=6, epoch=2, global_step=11, batch_idx=9, shard_id=1),
    ]
    b = batch_metadata(items)
    assert (b.index, b.epoch, b.global_step, b.batch_idx, b.shard_id) == (4, 3, 12, 2, 1)
    assert b.rng_key is key and b.entry_key == "first" and b.source_info == {"a": 1}


def _compilations(caplog, run):
    """How many times XLA compiles ``update_metadata_batch``'s function while ``run`` runs."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        run()
    return sum("Compiling jit(_update_metadata_batch)" in r.getMessage() for r in caplog.records)


def test_update_metadata_batch_is_jitted(caplog):
    # A source_info of its own: a structure no other test compiled, so the first call must.
    m = Metadata(global_step=10, batch_idx=0, source_info={"test": "is_jitted"})
    outs = []
    assert _compilations(caplog, lambda: outs.append(update_metadata_batch(m, 32))) == 1
    assert (int(outs[0].global_step), int(outs[0].batch_idx)) == (42, 1)

    # Other batch sizes and counters of the same types reuse that compilation.
    def sizes():
        outs.extend(update_metadata_batch(m.replace(global_step=i), i) for i in range(5))

    assert _compilations(caplog, sizes) == 0
    assert [int(o.global_step) for o in outs[1:]] == [0, 2, 4, 6, 8]

    # Its output (weakly typed array counters, like Python ints) chains without compiling.
    def chain():
        outs.append(update_metadata_batch(update_metadata_batch(outs[0], 8), 8))

    assert _compilations(caplog, chain) == 0
    assert (int(outs[-1].global_step), int(outs[-1].batch_idx)) == (58, 3)
    traced = jax.jit(lambda m, n: update_metadata_batch(m, n))(m, jnp.int32(3))
    assert int(traced.global_step) == 13


def test_update_metadata_batch_refuses_bad_batch_sizes():
    with pytest.raises(ValueError, match="batch_size must be >= 0"):
        update_metadata_batch(Metadata(), -1)
    with pytest.raises(ValueError, match="batch_size must be >= 0"):
        update_metadata_batch(Metadata(), jnp.int32(-4))
    with pytest.raises(TypeError, match="batch_size"):
        update_metadata_batch(Metadata(), 2.5)
