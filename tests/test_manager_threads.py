"""A MetadataManager used from loader threads while another thread snapshots it.

Every snapshot (``read_position``, what a checkpoint saves) must show the counters and the
``metadata`` stream's count of one instant, and no two records may share an index or a
key. The interpreter is made to switch threads as often as it can, so that a snapshot or a
second loader lands between any two bytecodes of a record's creation.
"""

import sys
import threading

import jax
import numpy as np
import pytest
from flax import nnx

from datarax.core._position import read_position
from datarax.core.metadata import MetadataManager

SNAPSHOTS = 3000
RECORDS = 4000  # per loader thread


@pytest.fixture
def switch_often():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _load(manager, out, errors):
    """Creates RECORDS records, every third call a batch of three."""
    try:
        i = 0
        while i < RECORDS:
            if i % 4 == 3:
                out.append(manager.create_batch_metadata([i, i + 1, i + 2]))
                i += 3
            else:
                out.append(manager.create_metadata(i))
                i += 1
    except BaseException as e:  # surfaced by the main thread
        errors.append(e)


def _snapshot(manager, loaders, snapshots, errors):
    """Snapshots until the loaders are done, and at least SNAPSHOTS times."""
    try:
        while len(snapshots) < SNAPSHOTS or any(t.is_alive() for t in loaders):
            position = read_position(manager)
            count = int(position.streams["metadata"].count)
            snapshots.append((position.state["index"], position.state["global_step"], count))
    except BaseException as e:
        errors.append(e)


def _indices_and_keys(records):
    out = []
    for r in records:
        keys = np.asarray(jax.random.key_data(r.rng_key)).reshape(-1, 2)
        out.extend(zip(np.atleast_1d(r.index).tolist(), map(bytes, keys), strict=True))
    return out


def test_loader_threads_and_a_saving_thread_see_one_instant(switch_often):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=5), track_batches=True)
    errors, snapshots, records = [], [], [[], []]
    loaders = [threading.Thread(target=_load, args=(manager, out, errors)) for out in records]
    saver = threading.Thread(target=_snapshot, args=(manager, loaders, snapshots, errors))
    for thread in (*loaders, saver):
        thread.start()
    for thread in (*loaders, saver):
        thread.join()
    assert errors == []
    # A fresh manager's index, global_step and stream count advance together: equal at
    # every instant between two records.
    torn = [s for s in snapshots if not s[0] == s[1] == s[2]]
    assert torn == []
    assert [s[0] for s in snapshots] == sorted(s[0] for s in snapshots)
    every = _indices_and_keys(records[0] + records[1])
    assert len(every) >= 2 * RECORDS
    indices = sorted(index for index, _ in every)
    assert indices == list(range(len(every)))  # no index twice, none skipped
    assert len({key for _, key in every}) == len(every)  # no key twice
    final = read_position(manager)
    assert final.state["index"] == int(final.streams["metadata"].count) == len(every)


def test_keys_read_from_several_threads_are_the_streams_keys(switch_often):
    """Lazily derived keys (shared windows of one stream) read from several threads at once."""
    manager = MetadataManager(rngs=nnx.Rngs(metadata=9))
    records = [manager.create_metadata(i) for i in range(3000)]
    stream_key = nnx.Rngs(metadata=9).metadata.key.get_value()
    expected = np.asarray(
        jax.random.key_data(
            jax.vmap(jax.random.fold_in, (None, 0))(stream_key, np.arange(3000, dtype=np.uint32))
        )
    )
    found = [[], [], []]

    def read(out, order):
        out.extend((i, np.asarray(jax.random.key_data(records[i].rng_key))) for i in order)

    orders = [range(3000), range(2999, -1, -1), range(0, 3000, 7)]
    threads = [threading.Thread(target=read, args=a) for a in zip(found, orders, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out in found:
        for i, key in out:
            np.testing.assert_array_equal(key, expected[i])
