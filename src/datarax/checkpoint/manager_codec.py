"""``MetadataManager`` <-> JSON document, with no I/O.

The document holds the manager's logical position: its counters, ``shard_id``,
``track_batches`` and, for every ``nnx.Rngs`` stream, the key (typed or raw, its impl and
data) and the count. :func:`snapshot_manager` copies all of it to host values at once, so
what is saved is the state at the moment of the call, whatever the manager does next.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from datarax.checkpoint.arrays import is_key, key_host_data, wrap_key
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.integrity import process_header
from datarax.core.metadata import MetadataManager

KIND = "MetadataManager"


@functools.cache
def _plain_types() -> tuple[type, ...]:
    # Built on first use, not at import: creating an array initialises the XLA backend,
    # which must wait for jax.distributed.initialize() in a multi-process job.
    return (dict, np.ndarray, type(jax.numpy.zeros(0)), type(jax.random.key(0)))


def _read(variable: Any) -> Any:
    """``variable.get_value()``, without its cost for the plain values a manager holds.

    ``get_value`` copies the value and asks JAX whether it is an array ref (tens of
    microseconds, which a save on every step would pay several times). A value of one of
    these concrete types is never a ref; a Variable with ``on_get_value`` hooks, or any
    other value, goes through ``get_value``.
    """
    raw = variable._raw_value
    if type(raw) in _plain_types() and "on_get_value" not in variable._var_metadata:
        return dict(raw) if type(raw) is dict else raw
    return variable.get_value()


_STATE_KEYS = ("global_step", "epoch", "index", "batch_idx")
_U32 = np.dtype(np.uint32)


def _write(variable: Any, value: Any) -> None:
    """``variable.set_value(value)``, without its cost for the plain values a manager holds.

    Like :func:`_read`, and like the manager's own fast path: a Variable with no
    ``on_set_value`` hooks whose old and new values are of the plain types (never refs) is
    updated in place; anything else goes through ``set_value``.
    """
    plain = _plain_types()
    if (
        type(value) in plain
        and type(variable._raw_value) in plain
        and "on_set_value" not in variable._var_metadata
    ):
        object.__setattr__(variable, "_raw_value", value)
    else:
        variable.set_value(value)


def _host_int(value: Any, where: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool | np.bool_ | jax.core.Tracer):
        value = object()  # refused below
    if type(value) is int:
        return value
    if isinstance(value, np.integer) or (
        isinstance(value, np.ndarray | jax.Array)
        and value.shape == ()
        and np.issubdtype(value.dtype, np.integer)
    ):
        return int(value)
    raise MetadataCheckpointError(
        f"Cannot save {where}: expected an int{' or None' if optional else ''}, found "
        f"{type(value).__name__} {value!r}. Save outside JAX transformations. Nothing was written."
    )


# A stream's key rarely changes between saves, so its part of the document is kept by key
# identity (the key is kept alive with its entry, so its id cannot be reused meanwhile).
_key_entries: dict[int, tuple[Any, dict[str, Any]]] = {}
_KEY_ENTRIES = 64


def _key_entry(key: Any, where: str) -> dict[str, Any]:
    """``{"typed", "impl", "key_shape", "key_data"}`` of a stream key."""
    hit = _key_entries.get(id(key))
    if hit is not None and hit[0] is key:
        return hit[1]
    if isinstance(key, jax.core.Tracer):
        raise MetadataCheckpointError(
            f"{where}.key is a tracer: save and restore outside JAX transformations."
        )
    if is_key(key):
        impl, data = key_host_data(key)
        typed = True
    elif isinstance(key, jax.Array | np.ndarray) and key.dtype == _U32:
        impl, data, typed = None, np.asarray(key), False
    else:
        raise MetadataCheckpointError(
            f"{where}.key: expected a JAX PRNG key, found "
            f"{getattr(key, 'dtype', type(key).__name__)}."
        )
    entry = {
        "typed": typed,
        "impl": impl,
        "key_shape": list(np.shape(key)),
        "key_data": data.ravel().tolist(),
    }
    if typed:  # a raw key may be a mutable NumPy array: never cached
        if len(_key_entries) >= _KEY_ENTRIES:
            _key_entries.pop(next(iter(_key_entries)))
        _key_entries[id(key)] = (key, entry)
    return entry


def _stream_snapshot(name: str, stream: Any) -> dict[str, Any]:
    where = f"manager.rngs[{name!r}]"
    entry = _key_entry(_read(stream.key), where)
    count = _read(stream.count)
    if type(count) is np.ndarray and count.shape == () and count.dtype == _U32:
        return {**entry, "count_shape": [], "count": [int(count)]}  # the manager's own form
    if isinstance(count, jax.core.Tracer) or not (
        isinstance(count, np.ndarray | jax.Array | np.integer | int)
        and np.issubdtype(np.asarray(count).dtype, np.integer)
    ):
        raise MetadataCheckpointError(
            f"Cannot save {where}.count: expected a uint32 count, found {count!r}."
        )
    count = np.asarray(count)
    return {**entry, "count_shape": list(count.shape), "count": count.ravel().tolist()}


def snapshot_manager(manager: MetadataManager) -> dict[str, Any]:
    """The JSON document of ``manager``'s state, copied now.

    Args:
        manager: The manager to save.

    Returns:
        A JSON-ready dict (see ``docs/checkpoint-format.md``).

    Raises:
        MetadataCheckpointError: A counter, key or count that is not a concrete value (for
            instance a tracer, inside a JAX transformation).

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.checkpoint.manager_codec import snapshot_manager
        >>> doc = snapshot_manager(MetadataManager(rngs=nnx.Rngs(metadata=7)))
        >>> doc["state"], doc["rngs"]["metadata"]["key_data"]
        ({'global_step': 0, 'epoch': 0, 'index': 0, 'batch_idx': None}, [0, 7])
    """
    state = _read(manager.state)
    if type(state) is not dict or set(state) != set(_STATE_KEYS):
        raise MetadataCheckpointError(
            f"Cannot save manager.state: expected a dict with keys {list(_STATE_KEYS)}, found "
            f"{state!r}."
        )
    counters = {
        k: _host_int(state[k], f"manager.state[{k!r}]", optional=k == "batch_idx")
        for k in _STATE_KEYS
    }
    rngs = manager.rngs
    streams = None
    if rngs is not None:
        streams = {name: _stream_snapshot(name, stream) for name, stream in rngs.items()}
    return {
        **process_header(KIND),
        "state": counters,
        "shard_id": _host_int(manager.shard_id, "manager.shard_id", optional=True),
        "track_batches": bool(manager.track_batches),
        "rngs": streams,
    }


def describe_manager(doc: dict[str, Any]) -> dict[str, Any]:
    """What ``handler.metadata(directory)`` returns for a manager item."""
    streams = doc["rngs"]
    return {
        "format_version": doc["format_version"],
        "kind": KIND,
        "process_count": doc["process_count"],
        "state": dict(doc["state"]),
        "shard_id": doc["shard_id"],
        "track_batches": doc["track_batches"],
        "streams": None
        if streams is None
        else {
            name: {
                "typed": s["typed"],
                "impl": s["impl"],
                "key_shape": s["key_shape"],
                "count": s["count"][0] if s["count_shape"] == [] else s["count"],
            }
            for name, s in streams.items()
        },
    }


def _differences(
    manager: MetadataManager, doc: dict[str, Any], keys: dict[str, dict[str, Any]] | None
) -> list[str]:
    """How ``manager`` is built differently from the saved one; ``keys`` holds the
    :func:`_key_entry` of each of its stream keys."""
    found = []
    if doc["track_batches"] != manager.track_batches:
        found.append(
            f"track_batches: saved {doc['track_batches']}, this manager has {manager.track_batches}"
        )
    saved = doc["rngs"]
    if (saved is None) != (keys is None):
        found.append(
            f"rngs: saved {'no rngs' if saved is None else 'streams ' + str(sorted(saved))}, "
            f"this manager has {'no rngs' if keys is None else 'streams ' + str(sorted(keys))}"
        )
    elif saved is not None and keys is not None:
        if set(saved) != set(keys):
            found.append(
                f"rngs streams: saved {sorted(saved)}, this manager has {sorted(keys)} "
                f"(missing here: {sorted(set(saved) - set(keys))}, "
                f"not saved: {sorted(set(keys) - set(saved))})"
            )
        for name in sorted(set(saved) & set(keys)):
            s, mine = saved[name], keys[name]
            if (s["typed"], s["impl"]) != (mine["typed"], mine["impl"]):
                kind = f"a typed {mine['impl']} key" if mine["typed"] else "a raw key"
                was = f"a typed {s['impl']} key" if s["typed"] else "a raw key"
                found.append(f"rngs[{name!r}]: saved {was}, this manager has {kind}")
            elif mine["key_shape"] != s["key_shape"]:
                found.append(
                    f"rngs[{name!r}]: saved a key of shape {tuple(s['key_shape'])}, this "
                    f"manager has shape {tuple(mine['key_shape'])}"
                )
    return found


def restore_manager(manager: MetadataManager, doc: dict[str, Any], where: str) -> MetadataManager:
    """Sets ``manager``'s state to the saved state in ``doc``, all or nothing.

    Args:
        manager: A manager built like the saved one (same streams, same ``track_batches``).
        doc: A document from :func:`snapshot_manager`.
        where: The file ``doc`` was read from, for error messages.

    Returns:
        ``manager``, updated.

    Raises:
        MetadataCheckpointError: ``manager`` is built differently from the saved manager; the
            message lists every difference. ``manager`` is then left unchanged.
    """
    streams = None if manager.rngs is None else dict(manager.rngs.items())
    keys = None
    if streams is not None:
        keys = {
            name: _key_entry(_read(stream.key), f"manager.rngs[{name!r}]")
            for name, stream in streams.items()
        }
    differences = _differences(manager, doc, keys)
    if differences:
        raise MetadataCheckpointError(
            f"{where}: the manager to restore into is built differently from the saved one: "
            + "; ".join(differences)
            + ". Build it with the same nnx.Rngs streams and track_batches as the saved run."
        )
    counters = doc["state"]
    new_state = {k: counters[k] for k in _STATE_KEYS}
    for k in _STATE_KEYS:
        if not (type(new_state[k]) is int or (k == "batch_idx" and new_state[k] is None)):
            raise MetadataCheckpointError(f"{where}: state[{k!r}] is {new_state[k]!r}.")
    updates = []
    if doc["rngs"] is not None and streams is not None and keys is not None:
        for name, stream in streams.items():
            s = doc["rngs"][name]
            try:
                if s["count_shape"] == [] and len(s["count"]) == 1:
                    count = np.array(s["count"][0], dtype=np.uint32)
                else:
                    count = np.asarray(s["count"], dtype=np.uint32).reshape(s["count_shape"])
                if s["typed"] and keys[name]["key_data"] == s["key_data"]:
                    # The manager was built with the saved key (the usual resume): keeping the
                    # very object spares a new key's first use and keeps its derived keys.
                    key = None
                else:
                    data = np.asarray(s["key_data"], dtype=np.uint32)
                    if s["typed"]:
                        data = data.reshape(*s["key_shape"], -1)
                        key = wrap_key(data, s["impl"], f"{where}: rngs[{name!r}]")
                    else:
                        key = jax.numpy.asarray(data.reshape(s["key_shape"]))
            except (ValueError, OverflowError) as e:
                raise MetadataCheckpointError(f"{where}: rngs[{name!r}] is malformed ({e}).") from e
            updates.append((stream, key, count))
    _write(manager.state, new_state)
    if manager.shard_id != doc["shard_id"]:
        manager.shard_id = doc["shard_id"]
    for stream, key, count in updates:
        if key is not None:
            _write(stream.key, key)
        _write(stream.count, count)
    return manager
