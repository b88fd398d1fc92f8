"""The metadata of a whole batch of records, from plain values.

``MetadataManager.create_batch_metadata`` reserves a batch's counters and stream counts
under its lock; the functions here build the batch from what was reserved, without the lock
and without the manager: NumPy counters and one jitted key derivation where the counters are
Python ints, JAX operations where they are arrays or tracers (inside ``nnx`` transforms).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core._keys import encode_key_bytes
from datarax.core._record import RecordMetadata
from datarax.core._rng import fold_in_each

_INT_TYPES = {int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64}
_STR_TYPES = {str, np.str_}
_REFUSED = (
    "record_keys must be all ints or all strs (a list, tuple or 1-D NumPy array of them), got {}."
)


def record_key_array(record_keys: Any) -> np.ndarray | jax.Array:
    """``record_keys`` as a 1-D NumPy array of integers or of strings, checked; a traced
    integer array (inside a JAX transformation) as it is, as a record would hold it."""
    keys: np.ndarray | jax.Array
    if isinstance(record_keys, jax.Array):
        if not jnp.issubdtype(record_keys.dtype, jnp.integer):
            raise TypeError(_REFUSED.format(f"a JAX array of dtype {record_keys.dtype}"))
        traced = isinstance(record_keys, jax.core.Tracer)  # held as it is, as a record holds it
        keys = record_keys if traced else np.asarray(record_keys)
    elif isinstance(record_keys, np.ndarray):
        keys = record_keys
    else:
        # NumPy would turn [1, "a"] into strings and [1, True] into ints: check the types.
        types = set(map(type, record_keys))
        if not (types <= _INT_TYPES or types <= _STR_TYPES):
            raise TypeError(_REFUSED.format(sorted(t.__name__ for t in types)))
        keys = np.asarray(record_keys, dtype=np.int64 if not types or types <= _INT_TYPES else None)
    if keys.ndim != 1:
        raise ValueError(f"record_keys must be 1-D (one key per record), got shape {keys.shape}.")
    if isinstance(keys, jax.core.Tracer):
        return keys
    kind = keys.dtype.kind
    if kind in "iu":
        return keys
    if kind == "U":
        # 32 characters are at most 128 UTF-8 bytes: only longer keys need the exact check.
        if keys.size and (
            np.strings.str_len(keys).max() > 32 or np.strings.find(keys, "\x00").max() >= 0
        ):
            for key in keys:
                encode_key_bytes(str(key))
        return keys
    raise TypeError(_REFUSED.format(f"an array of dtype {keys.dtype}"))


def counter_dtype() -> np.dtype:
    """The dtype of a batch's counters: JAX's default integer dtype."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.int64))


def check_fits(state: dict[str, Any], shard_id: int | None, n: int) -> None:
    """Raises ``OverflowError`` where ``n`` more records would pass :func:`counter_dtype`."""
    top = max(state["index"], state["global_step"], state["epoch"], state["batch_idx"] or 0)
    top = max(top, shard_id or 0) + n
    dtype = counter_dtype()
    if top > np.iinfo(dtype).max:
        raise OverflowError(f"Counters up to {top} do not fit the integer dtype {dtype}.")


def stream_keys(key: Any, count: Any, n: int) -> jax.Array:
    """``fold_in(key, count + i)`` for ``i < n``, stacked: what ``n`` calls of an
    ``nnx.RngStream`` holding ``key`` and ``count`` return, for any key shape, traced or not."""
    return fold_in_each(key, count + jnp.arange(n, dtype=jnp.uint32))


def build_batch(
    keys: np.ndarray | jax.Array,
    state: dict[str, Any],
    shard_id: int | None,
    rng_key: Any,
    source_info: dict[str, Any] | None,
) -> RecordMetadata:
    """The batch of ``len(keys)`` records whose first record has the counters of ``state``.

    Python-int counters give NumPy arrays; array or traced counters give JAX arrays.
    """
    n = len(keys)
    dtype = counter_dtype()
    host = all(type(state[k]) is int for k in ("index", "epoch", "global_step"))
    xp = np if host else jnp

    def full(value: Any) -> Any:
        return None if value is None else xp.full(n, value, dtype=dtype)

    def count_up(value: Any) -> Any:
        if host:  # check_fits made sure that value + n fits dtype
            return np.arange(value, value + n, dtype=dtype)
        return jnp.arange(n, dtype=dtype) + jnp.asarray(value, dtype)

    # Built without RecordMetadata's checks: every field is valid by construction (the
    # keys were checked by record_key_array, source_info by the caller), and the checks
    # would cost a batch of 256 as much as deriving its keys.
    record = object.__new__(RecordMetadata)
    record.__dict__.update(
        index=count_up(state["index"]),
        record_key=keys,
        rng_key=rng_key,
        epoch=full(state["epoch"]),
        global_step=count_up(state["global_step"]),
        batch_idx=full(state["batch_idx"]),
        shard_id=full(shard_id),
        source_info=source_info,
    )
    return record
