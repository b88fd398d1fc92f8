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
from typing import Any

import numpy as np
from flax import nnx

from datarax.core._lock import POSITION_LOCK
from datarax.core._manager import MetadataManager

STATE_KEYS = ("global_step", "epoch", "index", "batch_idx")
"""The keys of ``MetadataManager.state``."""


@dataclasses.dataclass(frozen=True)
class StreamPosition:
    """One ``nnx.Rngs`` stream: its key (a typed key array, or a raw ``uint32`` key as held)
    and its count (the manager's own form is a 0-d NumPy ``uint32`` array)."""

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


def _get(variable: nnx.Variable) -> Any:
    """The Variable's value, through its ``on_get_value`` hooks where it has some."""
    if variable.get_metadata("on_get_value", None) is not None:
        return variable.get_value()
    value = variable.get_raw_value()
    if isinstance(value, np.ndarray):  # NumPy arrays are mutable: copy
        return value.copy()
    if type(value) is dict:
        return dict(value)
    return value


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
        state = _get(manager.state)
        rngs = manager.rngs
        streams = None
        if rngs is not None:
            streams = {
                name: StreamPosition(_get(stream.key), _get(stream.count))
                for name, stream in rngs.items()
            }
        return Position(state, manager.shard_id, manager.track_batches, streams)


def build_manager(position: Position) -> MetadataManager:
    """A new manager at ``position``: its next record is the one the saved manager would
    have handed out next.

    Args:
        position: What :func:`read_position` returned (or a checkpoint decoded into one).

    Returns:
        A new :class:`MetadataManager`; no existing object is touched.

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
    rngs = None
    if position.streams is not None:
        rngs = nnx.Rngs(**{name: 0 for name in position.streams})
        for name, stream in position.streams.items():
            held = getattr(rngs, name)
            held.key.set_raw_value(stream.key)
            held.count.set_raw_value(stream.count)
    manager = MetadataManager(
        rngs=rngs, track_batches=position.track_batches, shard_id=position.shard_id
    )
    manager.state.set_raw_value({k: position.state[k] for k in STATE_KEYS})
    return manager
