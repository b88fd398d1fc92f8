"""Exact-equality oracles shared by the checkpoint tests (``tests/test_checkpoint_*.py``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core.metadata import Metadata, MetadataManager


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def assert_exact(actual: Any, expected: Any, *, check_sharding: bool = False) -> None:
    """Same structure (containers, ``source_info`` with its types), and leaf by leaf the same
    type, dtype, shape and bits (keys: the same impl and key data)."""
    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(actual)
    leaves_b, tree_b = jax.tree_util.tree_flatten_with_path(expected)
    assert tree_a == tree_b, f"structures differ:\n{tree_a}\n{tree_b}"
    for (path, a), (_, b) in zip(leaves_a, leaves_b, strict=True):
        where = jax.tree_util.keystr(path)
        assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
        if _is_key(b):
            assert _is_key(a), where
            assert jax.random.key_impl(a) == jax.random.key_impl(b), where
            assert a.shape == b.shape, where
            np.testing.assert_array_equal(
                np.asarray(jax.random.key_data(a)), np.asarray(jax.random.key_data(b)), where
            )
        elif isinstance(b, np.ndarray | np.generic | jax.Array):
            assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a!r} != {b!r}"
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), where)
        else:
            assert a == b, f"{where}: {a!r} != {b!r}"
        if check_sharding and isinstance(b, jax.Array):
            assert a.sharding == b.sharding, f"{where}: {a.sharding} != {b.sharding}"
    assert _source_infos(actual) == _source_infos(expected)


def _source_infos(tree: Any) -> list[Any]:
    nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Metadata))
    return [_typed(n.source_info) for n in nodes if isinstance(n, Metadata)]


def _typed(value: Any) -> Any:
    """``value`` with the type of every part attached, so ``==`` tells 1 from True or 1.0."""
    if isinstance(value, dict):
        return (dict, [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value), [_typed(v) for v in value])
    return (type(value), repr(value))


def manager_state(manager: MetadataManager) -> dict[str, Any]:
    """Every piece of a manager's checkpointable state, as exact host values."""
    streams = None
    if manager.rngs is not None:
        streams = {}
        for name, stream in manager.rngs.items():
            key = stream.key.get_value()
            streams[name] = (
                str(jax.random.key_impl(key)) if _is_key(key) else None,
                np.asarray(jax.random.key_data(key) if _is_key(key) else key).tolist(),
                int(np.asarray(stream.count.get_value())),
            )
    state = manager.state.get_value()
    return {
        "state": {k: (type(v), v) for k, v in state.items()},
        "shard_id": manager.shard_id,
        "track_batches": manager.track_batches,
        "streams": streams,
    }


def next_records(manager: MetadataManager, n: int = 5) -> list[tuple[Any, ...]]:
    """The next ``n`` records' fields and key bits (this advances ``manager``)."""
    out = []
    for i in range(n):
        r = manager.create_metadata(record_key=i)
        bits = None if r.rng_key is None else np.asarray(jax.random.key_data(r.rng_key)).tolist()
        out.append((r.index, r.epoch, r.global_step, r.batch_idx, r.shard_id, bits))
    return out
