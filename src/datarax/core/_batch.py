"""Vectorised metadata for a whole batch of records (``MetadataManager.create_batch_metadata``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from datarax.core._checks import check_source_info
from datarax.core._keys import encode_key_bytes
from datarax.core._keystream import STREAM, reserve_keys
from datarax.core._record import RecordMetadata

if TYPE_CHECKING:
    from datarax.core._manager import MetadataManager


_INT_TYPES = {int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64}
_STR_TYPES = {str, np.str_}
_REFUSED = (
    "record_keys must be all ints or all strs (a list, tuple or 1-D NumPy array of them), got {}."
)


def record_key_array(record_keys: Any) -> np.ndarray:
    """``record_keys`` as a 1-D NumPy array of integers or of strings, checked."""
    if isinstance(record_keys, np.ndarray):
        keys = record_keys
    else:
        # NumPy would turn [1, "a"] into strings and [1, True] into ints: check the types.
        types = set(map(type, record_keys))
        if not (types <= _INT_TYPES or types <= _STR_TYPES):
            raise TypeError(_REFUSED.format(sorted(t.__name__ for t in types)))
        keys = np.asarray(record_keys, dtype=np.int64 if not types or types <= _INT_TYPES else None)
    if keys.ndim != 1:
        raise ValueError(f"record_keys must be 1-D (one key per record), got shape {keys.shape}.")
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


def create_batch(
    manager: MetadataManager, record_keys: Any, source_info: dict[str, Any] | None
) -> RecordMetadata:
    """See :meth:`MetadataManager.create_batch_metadata`."""
    keys = record_key_array(record_keys)
    check_source_info(source_info)
    n = len(keys)
    s = manager.state.get_value()
    for name in ("index", "epoch", "global_step"):
        if not isinstance(s[name], int):
            raise TypeError(
                f"create_batch_metadata needs int counters; state[{name!r}] is "
                f"{type(s[name]).__name__}."
            )
    dtype = jax.dtypes.canonicalize_dtype(np.int64)
    top = max(s["index"], s["global_step"], s["epoch"], s["batch_idx"] or 0, manager.shard_id or 0)
    if top + n > np.iinfo(dtype).max:
        raise OverflowError(f"Counters up to {top + n} do not fit the integer dtype {dtype}.")

    def full(value: int | None) -> np.ndarray | None:
        return None if value is None else np.full(n, value, dtype=dtype)

    rng_key = None
    rngs = manager.rngs
    stream = None if rngs is None else vars(rngs).get(STREAM)
    if stream is not None:
        reserved = reserve_keys(stream, n)
        if reserved is None:
            raise TypeError(
                f"create_batch_metadata needs the {STREAM!r} stream to hold one concrete key "
                "and count (not a split stream or traced values)."
            )
        keystream, first = reserved
        rng_key = keystream.derive_batch(first, n)
    record = RecordMetadata(
        index=np.arange(s["index"], s["index"] + n, dtype=dtype),
        record_key=keys,
        rng_key=rng_key,
        epoch=full(s["epoch"]),
        global_step=np.arange(s["global_step"], s["global_step"] + n, dtype=dtype),
        batch_idx=full(s["batch_idx"]),
        shard_id=full(manager.shard_id),
        source_info=source_info,
    )
    manager.state.set_value({**s, "index": s["index"] + n, "global_step": s["global_step"] + n})
    return record
