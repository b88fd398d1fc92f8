"""One bounded, least-recently-used, thread-safe cache of values computed from objects.

Why a cache keyed by identity: work derived from an immutable object is paid once per object,
not once per use. A stream key (a JAX key array, immutable) is turned into its
:class:`~datarax.core._keystream.KeyStream` of lazily derived keys for every record; the
checkpoint layer turns the same key into host bytes on every save and restore. Key arrays
are not hashable by value (and hashing their bytes would cost a device-to-host copy), so the
cache keys on ``id(obj)`` and keeps ``obj`` alive inside its entry: an id is never reused
while its entry exists, so a hit is always the object it was computed from.

Why bounded and least-recently-used: a process may hold many live stream keys (one per
manager, per shard, per restored checkpoint). A first-in-first-out cache smaller than the
working set misses on every lookup; a least-recently-used one of :data:`DEFAULT_SIZE`
entries keeps every key of a thousand live managers, and still frees what is no longer used.

Why one lock: loader threads and a saving thread look up the same keys; the lock makes
every lookup and insertion one step, and computing a missing value happens outside it (two
threads may compute the same value once each; both results are equal, one is kept).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")

DEFAULT_SIZE = 4096
"""Entries kept by default: 1,000 live streams, each with a couple of derived values, fit."""


class IdentityCache(Generic[V]):
    """Values computed from objects, found by the object's identity.

    Values are never ``None`` (``get`` says "not stored" with ``None``).

    Args:
        size: The most entries kept; the least recently used one is dropped beyond it.

    Examples:
        >>> from datarax.core._cache import IdentityCache
        >>> cache = IdentityCache(size=2)
        >>> a, b, c = [1], [2], [3]
        >>> cache.get_or_compute(a, len)
        1
        >>> _ = cache.put(b, "b")
        >>> cache.get(a)  # a is used again: b is now the least recently used
        1
        >>> _ = cache.put(c, "c")
        >>> cache.get(b) is None, cache.get(c), len(cache)
        (True, 'c', 2)
    """

    __slots__ = ("_entries", "_lock", "size")

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}.")
        self.size = size
        # id(obj) -> (obj, value); holding obj keeps its id from being reused.
        self._entries: OrderedDict[int, tuple[Any, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, obj: Any) -> V | None:
        """The value stored for ``obj`` (marked as just used), or ``None``."""
        with self._lock:
            entry = self._entries.get(id(obj))
            if entry is None or entry[0] is not obj:
                return None
            self._entries.move_to_end(id(obj))
            return entry[1]

    def put(self, obj: Any, value: V) -> V:
        """Stores ``value`` for ``obj`` unless a value is already stored; returns the stored one."""
        with self._lock:
            entry = self._entries.get(id(obj))
            if entry is not None and entry[0] is obj:
                self._entries.move_to_end(id(obj))
                return entry[1]
            self._entries[id(obj)] = (obj, value)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return value

    def get_or_compute(self, obj: Any, compute: Callable[[Any], V]) -> V:
        """The value stored for ``obj``, or ``compute(obj)`` stored and returned.

        ``compute`` runs without the lock held; when two threads compute the value of one
        object at once, both get the value stored first.
        """
        value = self.get(obj)
        if value is None:
            value = self.put(obj, compute(obj))
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drops every entry."""
        with self._lock:
            self._entries.clear()
