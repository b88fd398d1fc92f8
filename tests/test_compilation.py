"""A jitted function fed a stream of metadata compiles once (traces are counted)."""

import jax
import pytest
from flax import nnx

from datarax.core.metadata import Metadata, MetadataManager


def counting_jit():
    traces = []

    @jax.jit
    def f(metadata):
        traces.append(1)
        return jax.tree.map(lambda x: x, metadata)

    return f, traces


def test_a_stream_of_metadata_compiles_once():
    f, traces = counting_jit()
    key = jax.random.key(0)
    for i in range(12):
        m = Metadata(
            index=i,
            epoch=i // 4,
            global_step=3 * i,
            batch_idx=i % 4,
            shard_id=1,
            rng_key=jax.random.fold_in(key, i),
            source_info={"file": ("a", 1)},
            key=f"record-{i}" * (1 + i % 5),
        )
        out = f(m)
        assert out.entry_key == m.entry_key and out.source_info == m.source_info
    assert len(traces) == 1


@pytest.mark.parametrize("record_key", [lambda i: i, lambda i: f"shard/{i:05d}" * (i % 3 + 1)])
def test_a_managers_record_stream_compiles_once(record_key):
    f, traces = counting_jit()
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0), track_batches=True, shard_id=0)
    for i in range(20):
        record = manager.create_metadata(record_key(i), source_info={"split": "train"})
        out = f(record)
        assert int(out.index) == i
        if isinstance(record.record_key, str):
            assert out.record_key == record.record_key
        if i % 5 == 4:
            manager.next_batch()
    assert len(traces) == 1


def test_batches_of_a_stream_compile_once():
    f, traces = counting_jit()
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
    for i in range(5):
        f(manager.create_batch_metadata([f"k{i}-{j}" for j in range(8)]))
    assert len(traces) == 1
