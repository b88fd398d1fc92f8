"""Key windows of one stream: every key bit-identical to ``fold_in(stream_key, count)``,
whatever order records and batches ask for them in."""

import jax
import numpy as np
import pytest

from datarax.core._keystream import KeyStream


def _expected(key, start, size):
    counts = np.arange(start, start + size, dtype=np.uint64) % 2**32
    return np.stack([jax.random.key_data(jax.random.fold_in(key, int(c))) for c in counts])


@pytest.mark.parametrize(
    "starts",
    [
        [0, 256, 512, 768],  # in order
        [4096 * 3, 0, 256, 4096 * 2 + 512, 4096, 768],  # out of order, as prefetch threads ask
        [5, 5 + 256 * 20, 5 + 256 * 3],  # a grid that does not start at 0
        [300, 300 + 256, 44],  # an earlier batch whose window starts below count 0
        [2**32 - 512, 2**32 - 256, 2**32 - 256 * 40],  # counts near the top of uint32
    ],
)
def test_batches_in_any_order_get_their_own_keys(starts):
    key = jax.random.key(11)
    stream = KeyStream(key)
    for start in starts:
        got = jax.random.key_data(stream.derive_batch(start, 256))
        np.testing.assert_array_equal(got, _expected(key, start, 256))


def test_a_record_between_batches_moves_the_grid():
    key = jax.random.key(3)
    stream = KeyStream(key)
    for start in (0, 256, 513, 769):  # one record (count 512) between the second and third
        got = jax.random.key_data(stream.derive_batch(start, 256))
        np.testing.assert_array_equal(got, _expected(key, start, 256))
    assert stream.get(512) is not None
    np.testing.assert_array_equal(jax.random.key_data(stream.get(512)), _expected(key, 512, 1)[0])


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_every_key_impl_gets_fold_in_s_keys_in_any_window(impl):
    """``unsafe_rbg``'s ``fold_in`` gives other bits under ``vmap``: a window must still
    hold exactly what one ``fold_in`` per count returns, whatever its start and size."""
    key = jax.random.key(9, impl=impl)
    for start in (0, 3, 1000):
        for size in (1, 8, 40):
            got = jax.random.key_data(KeyStream(key).derive_batch(start, size))
            np.testing.assert_array_equal(got, _expected(key, start, size))
    stream = KeyStream(key)
    for count in (0, 1, 2, 3, 17, 5):  # records: windows that continue and jump
        np.testing.assert_array_equal(
            jax.random.key_data(stream.get(count)), _expected(key, count, 1)[0]
        )


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_a_manager_s_records_and_batches_equal_stream_calls_for_every_impl(impl):
    from flax import nnx

    from datarax.core.metadata import MetadataManager

    manager = MetadataManager(rngs=nnx.Rngs(metadata=jax.random.key(4, impl=impl)))
    stream = nnx.Rngs(metadata=jax.random.key(4, impl=impl)).metadata
    got = [manager.create_metadata(i).rng_key for i in range(5)]
    got += list(manager.create_batch_metadata(list(range(7))).rng_key)

    @nnx.jit
    def in_jit(m):  # the generic path: counters and counts are traced
        return m.create_batch_metadata([1, 2, 3]).rng_key

    got += list(in_jit(manager))
    for i, key in enumerate(got):
        np.testing.assert_array_equal(
            jax.random.key_data(key), jax.random.key_data(stream()), err_msg=f"key {i}"
        )
