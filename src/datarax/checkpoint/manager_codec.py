"""A manager's :class:`~datarax.core._position.Position` <-> its JSON document, with no I/O.

The document holds the counters, ``shard_id``, ``track_batches`` and, for every ``nnx.Rngs``
stream, the key (typed or raw, impl, data) and the count (``docs/checkpoint-format.md``).
:func:`encode_manager` refuses what could not come back exactly; :func:`decode_manager`
refuses, naming the field, what a manager's constructor would refuse, and coerces nothing.
Managers themselves are read and built by :mod:`datarax.core._position`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.integrity import process_header
from datarax.checkpoint.manager_fields import (
    bad,
    check_fields,
    check_stream,
    field_int,
    stream_name,
)
from datarax.checkpoint.manager_streams import decode_streams
from datarax.core._cache import IdentityCache
from datarax.core._position import STATE_KEYS, Position, StreamPosition
from datarax.core._rng import is_key

MANAGER_KIND = "MetadataManager"
"""The ``kind`` of a manager item's process documents."""

_HEADER_FIELDS = frozenset({"format_version", "kind", "process_index", "process_count", "save"})
_BODY_FIELDS = frozenset({"state", "shard_id", "track_batches", "rngs"})
_U32 = np.dtype(np.uint32)
COUNTER_END = 2**63
"""Counters and ``shard_id`` are saved and restored in ``[0, 2**63)``: the range of the
int64 arrays a batch's metadata is built of, and well inside what JSON writes exactly."""


def _save_error(where: str, expected: str, value: Any) -> MetadataCheckpointError:
    found = getattr(value, "dtype", None) or type(value).__name__
    if type(value) is int and value.bit_length() > 64:  # its repr may exceed Python's limit
        shown = f"of {value.bit_length()} bits"
    else:
        shown = repr(value)
    return MetadataCheckpointError(
        f"Cannot save {where}: expected {expected}, found {found} {shown}. Nothing was written."
    )


def _host_int(value: Any, where: str, *, optional: bool = False) -> int | None:
    """A counter as a Python int: an int, NumPy integer or 0-d integer array, >= 0."""
    if value is None and optional:
        return None
    concrete = isinstance(value, np.ndarray | jax.Array) and not isinstance(value, jax.core.Tracer)
    if (
        type(value) is int
        or isinstance(value, np.integer)
        or (concrete and value.shape == () and np.issubdtype(value.dtype, np.integer))
    ):
        out = int(value)
    else:
        expected = "an int >= 0" + (" or None" if optional else "") + " (outside JAX transforms)"
        raise _save_error(where, expected, value)
    if not 0 <= out < COUNTER_END:
        raise _save_error(where, "an int in [0, 2**63)", value)
    return out


_KeyFields = tuple[bool, str | None, tuple[int, ...], tuple[int, ...]]
_CountFields = tuple[tuple[int, ...], tuple[int, ...]]

# A key (and a count held as a JAX array) is immutable, and a manager's keys rarely change
# between saves, while reading a key's data costs a device round trip and every save encodes
# each stream twice (when the args are built, and at the save): their fields are kept by
# identity (see datarax.core._cache for why and how).
_KEY_FIELDS: IdentityCache[_KeyFields] = IdentityCache()
_COUNT_FIELDS: IdentityCache[_CountFields] = IdentityCache()


def _key_fields(key: Any, where: str) -> _KeyFields:
    """``(typed, impl, shape, data)`` of a stream's key: a concrete typed key or raw
    ``uint32`` key array."""
    fields = _KEY_FIELDS.get(key)
    if fields is not None:
        return fields
    if isinstance(key, jax.core.Tracer):
        raise _save_error(where, "a concrete key (save outside JAX transforms)", key)
    if is_key(key):
        data = np.asarray(jax.random.key_data(key))
        fields = (True, str(jax.random.key_impl(key)), key.shape, tuple(data.ravel().tolist()))
        return _KEY_FIELDS.put(key, fields)
    if isinstance(key, jax.Array | np.ndarray) and key.dtype == _U32:
        fields = (False, None, key.shape, tuple(np.asarray(key).ravel().tolist()))
        # A NumPy array may change in place: only a JAX array's fields are kept.
        return _KEY_FIELDS.put(key, fields) if isinstance(key, jax.Array) else fields
    raise _save_error(where, "a JAX PRNG key or a raw uint32 key", key)


def _count_fields(count: Any, where: str) -> _CountFields:
    """``(shape, data)`` of a stream's count: a ``uint32`` array or NumPy scalar."""
    if type(count) is np.ndarray and count.dtype == _U32:  # as the manager holds it
        return count.shape, tuple(count.ravel().tolist())
    fields = _COUNT_FIELDS.get(count)
    if fields is not None:
        return fields
    if isinstance(count, jax.core.Tracer) or not (
        isinstance(count, np.ndarray | jax.Array | np.uint32) and count.dtype == _U32
    ):
        raise _save_error(where, "a uint32 count (as nnx.Rngs holds it)", count)
    host = np.asarray(count)
    fields = (host.shape, tuple(host.ravel().tolist()))
    return _COUNT_FIELDS.put(count, fields) if isinstance(count, jax.Array) else fields


def _stream_fields(name: str, stream: StreamPosition) -> tuple[_KeyFields, _CountFields]:
    if not stream_name(name):
        raise _save_error("a manager.rngs stream name", "an identifier not starting with _", name)
    key = _key_fields(stream.key, f"manager.rngs[{name!r}].key")
    count = _count_fields(stream.count, f"manager.rngs[{name!r}].count")
    if key[0] and tuple(count[0]) != tuple(key[2]):  # nnx.RngStream: a count per key
        where = f"manager.rngs[{name!r}].count"
        raise _save_error(where, f"the key's shape {tuple(key[2])}", stream.count)
    return key, count


def _encode_stream(name: str, stream: StreamPosition) -> dict[str, Any]:
    (typed, impl, key_shape, key_data), (count_shape, count) = _stream_fields(name, stream)
    return {
        "typed": typed,
        "impl": impl,
        "key_shape": list(key_shape),
        "key_data": list(key_data),
        "count_shape": list(count_shape),
        "count": list(count),
    }


def encode_manager(position: Position) -> dict[str, Any]:
    """The JSON document of a manager's position.

    Args:
        position: What :func:`~datarax.core._position.read_position` returned.

    Returns:
        A JSON-ready dict (see ``docs/checkpoint-format.md``).

    Raises:
        MetadataCheckpointError: A counter, ``shard_id``, key or count that a manager could
            not be rebuilt from (negative, not an integer, a tracer inside a JAX
            transformation), or a ``batch_idx`` that disagrees with ``track_batches``.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import read_position
        >>> from datarax.checkpoint.manager_codec import encode_manager
        >>> doc = encode_manager(read_position(MetadataManager(rngs=nnx.Rngs(metadata=7))))
        >>> doc["state"], doc["rngs"]["metadata"]["key_data"]
        ({'global_step': 0, 'epoch': 0, 'index': 0, 'batch_idx': None}, [0, 7])
    """
    counters = _counters(position)
    streams = position.streams
    return {
        **process_header(MANAGER_KIND),
        "state": counters,
        "shard_id": _host_int(position.shard_id, "manager.shard_id", optional=True),
        "track_batches": position.track_batches,
        "rngs": None
        if streams is None
        else {name: _encode_stream(name, s) for name, s in streams.items()},
    }


def check_position(position: Position) -> None:
    """Raises what :func:`encode_manager` would raise, without building the document.

    ``MetadataManagerSave`` checks the manager when its args are built, and the save
    encodes it again: a thousand streams' fields are looked up here, not copied.

    Raises:
        MetadataCheckpointError: As :func:`encode_manager`.

    Examples:
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import read_position
        >>> from datarax.checkpoint.manager_codec import check_position
        >>> manager = MetadataManager(shard_id=2)
        >>> check_position(read_position(manager))
        >>> manager.shard_id = -1
        >>> check_position(read_position(manager))
        Traceback (most recent call last):
        ...
        datarax.checkpoint.MetadataCheckpointError: Cannot save manager.shard_id: ...
    """
    _counters(position)
    _host_int(position.shard_id, "manager.shard_id", optional=True)
    for name, stream in (position.streams or {}).items():
        _stream_fields(name, stream)


def _counters(position: Position) -> dict[str, int | None]:
    """The counters of ``position.state`` as host ints, checked with ``track_batches``."""
    state = position.state
    if type(state) is not dict or set(state) != set(STATE_KEYS):
        raise _save_error("manager.state", f"a dict with keys {list(STATE_KEYS)}", state)
    counters = {
        k: _host_int(state[k], f"manager.state[{k!r}]", optional=k == "batch_idx")
        for k in STATE_KEYS
    }
    if type(position.track_batches) is not bool:
        raise _save_error("manager.track_batches", "a bool", position.track_batches)
    if (counters["batch_idx"] is None) == position.track_batches:
        expected = "an int >= 0 (track_batches=True)" if position.track_batches else "None"
        raise _save_error("manager.state['batch_idx']", expected, state["batch_idx"])
    return counters


@dataclasses.dataclass(frozen=True)
class _Checked:
    """A document's fields, each checked (see :func:`_check`), but for the streams of
    ``rngs``: :func:`decode_manager` checks them as it decodes them."""

    state: dict[str, int | None]
    shard_id: int | None
    track_batches: bool
    rngs: dict[Any, Any] | None


def _check(doc: dict[str, Any], where: str) -> _Checked:
    """Every field of a manager document, checked as strictly as the manager's constructor
    checks its arguments; the header fields were checked by the reader."""
    missing = sorted(_BODY_FIELDS - set(doc))
    unknown = sorted(set(doc) - _BODY_FIELDS - _HEADER_FIELDS)
    if missing or unknown:
        raise MetadataCheckpointError(
            f"{where}: the manager document lacks the fields {missing} and has unknown fields "
            f"{unknown}. The checkpoint item is damaged or was not written by datarax; restore "
            "an earlier step."
        )
    track_batches = doc["track_batches"]
    if type(track_batches) is not bool:
        raise bad(where, "track_batches", "true or false", track_batches)
    state = doc["state"]
    check_fields(where, "state", state, frozenset(STATE_KEYS))
    counters: dict[str, int | None] = {}
    for k in STATE_KEYS:
        if k == "batch_idx" and not track_batches:
            if state[k] is not None:
                raise bad(where, "state['batch_idx']", "null (track_batches is false)", state[k])
            counters[k] = None
        else:
            counters[k] = field_int(where, f"state[{k!r}]", state[k], COUNTER_END)
    shard_id = doc["shard_id"]
    if shard_id is not None:
        field_int(where, "shard_id", shard_id, COUNTER_END)
    rngs = doc["rngs"]
    if rngs is not None and type(rngs) is not dict:
        raise bad(where, "rngs", "null or a dict of streams", rngs)
    return _Checked(counters, shard_id, track_batches, rngs)


def decode_manager(doc: dict[str, Any], where: str) -> Position:
    """The position a manager document holds.

    Args:
        doc: A document read from a manager item (its header fields already checked).
        where: The file ``doc`` was read from, for error messages.

    Returns:
        The saved :class:`~datarax.core._position.Position`.

    Raises:
        MetadataCheckpointError: A field that is missing, unknown, of another type, out of
            range (a negative counter, key data outside uint32), inconsistent (``batch_idx``
            and ``track_batches``) or a key that JAX cannot rebuild (an unknown impl, data
            of another length); the message names the field.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import read_position
        >>> from datarax.checkpoint.manager_codec import decode_manager, encode_manager
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=7))
        >>> doc = encode_manager(read_position(manager))
        >>> decode_manager(doc, "process_0.jsonl").state["index"]
        0
        >>> decode_manager({**doc, "shard_id": "abc"}, "process_0.jsonl")
        Traceback (most recent call last):
        ...
        datarax.checkpoint.MetadataCheckpointError: process_0.jsonl: shard_id is 'abc' (str), ...
    """
    checked = _check(doc, where)
    streams = None if checked.rngs is None else decode_streams(where, checked.rngs)
    return Position(dict(checked.state), checked.shard_id, checked.track_batches, streams)


def describe_manager(doc: dict[str, Any], where: str = "the manager document") -> dict[str, Any]:
    """What ``handler.metadata(directory)`` returns for a manager item: its format version,
    process count, counters, ``shard_id``, ``track_batches``, and each stream's key kind and
    count (not its key data).

    Args:
        doc: A document read from a manager item (its header fields already checked).
        where: The file ``doc`` was read from, for error messages.

    Raises:
        MetadataCheckpointError: As :func:`decode_manager`, for a field that is malformed.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import read_position
        >>> from datarax.checkpoint.manager_codec import describe_manager, encode_manager
        >>> doc = encode_manager(read_position(MetadataManager(rngs=nnx.Rngs(metadata=7))))
        >>> describe_manager(doc)["streams"]
        {'metadata': {'typed': True, 'impl': 'threefry2x32', 'key_shape': [], 'count': 0}}
    """
    checked = _check(doc, where)
    streams = None
    if checked.rngs is not None:
        streams = {}
        for name, entry in checked.rngs.items():
            s = check_stream(where, name, entry)
            streams[name] = {
                "typed": s["typed"],
                "impl": s["impl"],
                "key_shape": s["key_shape"],
                "count": s["count"][0] if s["count_shape"] == [] else s["count"],
            }
    return {
        "format_version": doc["format_version"],
        "kind": MANAGER_KIND,
        "process_count": doc["process_count"],
        "state": dict(checked.state),
        "shard_id": checked.shard_id,
        "track_batches": checked.track_batches,
        "streams": streams,
    }
