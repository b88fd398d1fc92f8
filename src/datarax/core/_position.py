"""A ``MetadataManager``'s logical position, read in one instant and rebuilt as a new manager.

The checkpoint layer never reads or writes a manager's Variables itself: it asks
:func:`read_position` for a copy of everything a resume needs (counters, ``shard_id``,
``track_batches``, and each ``nnx.Rngs`` stream's key and count), taken under the lock that
every record, batch and counter update of the manager holds (:data:`POSITION_LOCK`), so a
loader thread creating records while another thread saves can never be seen between a
counter update and the matching stream count. :func:`build_manager` makes a *new* manager at
a position, leaving every existing object untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
from flax import nnx

from datarax.core._lock import POSITION_LOCK
from datarax.core._manager import MetadataManager
from datarax.core._variables import read

STATE_KEYS = ("global_step", "epoch", "index", "batch_idx")
"""The keys of ``MetadataManager.state``."""


class StreamPosition(NamedTuple):
    """One ``nnx.Rngs`` stream: its key (a typed key array, or a raw ``uint32`` key as held)
    and its count (the manager's own form is a 0-d NumPy ``uint32`` array). A named tuple:
    a restore makes one per stream, and a thousand streams are common enough."""

    key: Any
    count: Any


@dataclasses.dataclass(frozen=True)
class Position:
    """Everything a resume needs of a manager, copied at one instant.

    Attributes:
        state: ``{'global_step', 'epoch', 'index', 'batch_idx'}`` as held (ints, or arrays
            when the manager was used inside JAX transformations).
        shard_id: The manager's ``shard_id``.
        track_batches: The manager's ``track_batches``.
        streams: Each stream of ``manager.rngs`` by name, or ``None`` without ``rngs``.
    """

    state: dict[str, Any]
    shard_id: int | None
    track_batches: bool
    streams: dict[str, StreamPosition] | None


def read_position(manager: MetadataManager) -> Position:
    """A copy of ``manager``'s position, all of it from one instant.

    Args:
        manager: The manager to read.

    Returns:
        The :class:`Position`; later use of ``manager`` never changes it.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import read_position
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
        >>> _ = manager.create_metadata(record_key=0)
        >>> position = read_position(manager)
        >>> position.state["index"], int(position.streams["metadata"].count)
        (1, 1)
    """
    with POSITION_LOCK:
        state = read(manager.state)
        rngs = manager.rngs
        streams = None
        if rngs is not None:
            streams = {
                name: StreamPosition(read(stream.key), read(stream.count))
                for name, stream in rngs.items()
            }
        return Position(state, manager.shard_id, manager.track_batches, streams)


def build_manager(position: Position) -> MetadataManager:
    """A new manager at ``position``: its next record is the one the saved manager would
    have handed out next.

    The manager is rebuilt from a cached template of its structure (the pytree of a
    manager built by the constructor with the same streams and ``track_batches``), filled
    with ``position``'s values: ``jax.tree_util`` makes new Variables and ``nnx`` objects,
    exactly those the constructor makes, in one pass and without copying any value.

    Args:
        position: What :func:`read_position` returned (or a checkpoint decoded into one).

    Returns:
        A new :class:`MetadataManager`; no existing object is touched, and the keys and
        counts of ``position`` are held by it as they are (not copied).

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import build_manager, read_position
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
        >>> _ = manager.create_metadata(record_key=0)
        >>> twin = build_manager(read_position(manager))
        >>> a, b = manager.create_metadata(1), twin.create_metadata(1)
        >>> a.index == b.index, bool((a.rng_key == b.rng_key).all())
        (True, True)
    """
    streams = position.streams
    names = None if streams is None else tuple(streams)
    skeleton = _skeleton(names, position.track_batches, position.shard_id)
    leaves = list(skeleton.leaves)
    for k, at in skeleton.state_at:
        leaves[at] = position.state[k]
    if streams is not None:
        for (key_at, count_at), stream in zip(skeleton.streams_at, streams.values(), strict=True):
            leaves[key_at] = stream.key
            leaves[count_at] = stream.count
    manager: MetadataManager = skeleton.treedef.unflatten(leaves)
    if position.state["batch_idx"] is not None and not position.track_batches:
        # Not a leaf of the template (its batch_idx is None): set as held.
        manager.state.set_raw_value({k: position.state[k] for k in STATE_KEYS})
    return manager


class _Skeleton(NamedTuple):
    """A manager's pytree structure, its leaves, and where each value goes among them."""

    treedef: Any
    leaves: tuple[Any, ...]
    state_at: tuple[tuple[str, int], ...]
    streams_at: tuple[tuple[int, int], ...]


@functools.lru_cache(maxsize=64)
def _skeleton(
    names: tuple[str, ...] | None, track_batches: bool, shard_id: int | None
) -> _Skeleton:
    """The pytree of a manager built by the constructor with streams ``names`` (in this
    order: ``streams_at[i]`` is where stream ``names[i]``'s key and count go),
    ``track_batches`` and ``shard_id`` (static, part of the tree's structure: setting it on
    the rebuilt manager would cost more than the rest of the rebuild)."""
    # One key for every stream (the leaves are placeholders): no key is derived per stream.
    rngs = None if names is None else nnx.Rngs(**dict.fromkeys(names, jax.random.key(0)))
    manager = MetadataManager(rngs=rngs, track_batches=track_batches, shard_id=shard_id)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(manager)
    at = {_path_names(path): i for i, (path, _) in enumerate(with_paths)}
    state_at = tuple(
        (k, at[("state", "value", k)]) for k in STATE_KEYS if ("state", "value", k) in at
    )
    streams_at = tuple(
        (at[("rngs", name, "key", "value")], at[("rngs", name, "count", "value")])
        for name in names or ()
    )
    return _Skeleton(treedef, tuple(leaf for _, leaf in with_paths), state_at, streams_at)


def _path_names(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """A leaf's path as plain names: ``('rngs', 'metadata', 'key', 'value')``."""
    return tuple(getattr(entry, "name", getattr(entry, "key", entry)) for entry in path)
