"""Lazily derived ``nnx.Rngs`` stream keys: ``fold_in(stream_key, count)``, computed in windows.

One eager JAX op costs tens of microseconds, so deriving a key per record as it is created
would bound a pipeline at a few thousand records per second. Records instead carry a
reference ``(KeyStream, count)``; the first read of a record's key derives, in one jitted
call, a window of keys for consecutive counts and hands out the rest from that window. Each
key is bit-identical to ``jax.random.fold_in(stream_key, count)``, which is what calling the
``nnx.Rngs`` stream returns.

Threads: records are read from any thread (a loader thread, Grain's prefetch threads, the
training thread). A :class:`KeyStream`'s windows are one tuple of ``(start, keys)`` pairs,
replaced whole, so a reader always sees starts with the keys derived from them; a miss
derives a new window under the stream's own lock, never under the manager's position lock,
so deriving keys never holds up a thread that creates records or saves.
"""

from __future__ import annotations

import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from datarax.core._cache import IdentityCache
from datarax.core._jit import typed_jit
from datarax.core._rng import fold_in_each, is_key
from datarax.core._variables import has_hooks

STREAM = "metadata"
"""Name of the ``nnx.Rngs`` stream that record keys are drawn from."""

_FIRST_WINDOW = 8  # keys in a record window after a jump
_MAX_WINDOW = 1024  # keys in a record window at most
_MAX_WINDOW_KEYS = 4096  # keys in a window of batches at most (one batch if it is larger)
_MAX_WINDOW_BATCHES = 16  # batches in a window at most: one output each, compiled per count
_KEPT = 3  # windows kept per stream


@typed_jit(static_argnums=2)
def fold_in_range(key: jax.Array, start: ArrayLike, size: int) -> jax.Array:
    """``fold_in(key, c)`` for ``c`` in ``start, start + 1, ..., start + size - 1`` (mod 2**32)."""
    return fold_in_each(key, start + jnp.arange(size, dtype=jnp.uint32))


@typed_jit(static_argnums=(2, 3))
def fold_in_batches(
    key: jax.Array, start: ArrayLike, size: int, count: int
) -> tuple[jax.Array, ...]:
    """``count`` arrays of ``size`` keys each, for consecutive counts from ``start``: the
    keys of ``count`` consecutive batches, derived in one call."""
    return tuple(fold_in_range(key, start, size * count).reshape(count, size))


class KeyStream:
    """The keys of one stream key, with its most recently derived windows of keys.

    A window is ``(start, step, batched, items)``: ``items[i]`` holds the keys of counts
    ``start + i * step`` to ``start + (i + 1) * step - 1``; one key per item for records
    (``step == 1``, not ``batched``), one array of ``step`` keys per item for batches.
    """

    __slots__ = ("_lock", "_windows", "key")

    def __init__(self, key: jax.Array) -> None:
        self.key = key
        # The newest window first. Replaced whole, never mutated.
        self._windows: tuple[_Window, ...] = ()
        self._lock = threading.Lock()

    def get(self, count: int) -> jax.Array:
        """The key for ``count``: ``jax.random.fold_in(self.key, count)``."""
        return self._item(count, 1, False)

    def derive_batch(self, start: int, size: int) -> jax.Array:
        """One key array of shape ``(size,)`` for consecutive counts from ``start``."""
        if size == 0:
            return fold_in_range(self.key, np.uint32(start), 0)
        return self._item(start, size, True)

    def _item(self, start: int, step: int, batched: bool) -> jax.Array:
        found = _find(self._windows, start, step, batched)  # one read: starts and items agree
        if found is not None:
            return found
        with self._lock:
            found = _find(self._windows, start, step, batched)  # or another thread derived it
            if found is not None:
                return found
            first, count = self._next_window(start, step, batched)
            items: list[jax.Array]  # iterating a key array yields its keys
            first_count = np.uint32(first & 0xFFFFFFFF)  # a window may start below count 0
            if not batched:
                items = list(fold_in_range(self.key, first_count, count))
            else:
                items = list(fold_in_batches(self.key, first_count, step, count))
            self._windows = ((first, step, batched, items), *self._windows[: _KEPT - 1])
            return items[(start - first) // step]

    def _next_window(self, start: int, step: int, batched: bool) -> tuple[int, int]:
        """Where the window holding ``start`` begins, and how many items it holds."""
        if batched:
            return self._next_batch_window(start, step)
        # Readers moving forward (one thread, or several reading slightly out of order, as
        # Grain's prefetch threads do) get windows that continue the newest one and double
        # in size; a jump starts a small window at ``start``, so that sparse readers never
        # pay for many keys they do not read.
        if self._windows:
            first, held_step, held_batched, items = self._windows[0]
            end, count = first + len(items), min(2 * len(items), _MAX_WINDOW)
            if held_step == 1 and not held_batched and end <= start < end + count:
                return end, count
        return start, _FIRST_WINDOW

    def _next_batch_window(self, start: int, step: int) -> tuple[int, int]:
        """The window of batches of ``step`` keys holding the batch at ``start``.

        The first batch of a size gets a window of its own (one batch costs one batch's
        keys). Later batches of that size fall on a grid of windows of ``per_window``
        batches, anchored at the newest window of that size, so that batches requested out
        of order (from Grain's prefetch threads, which reserve in one order and derive in
        another) find the window another thread derived instead of each deriving their own.
        """
        per_window = max(1, min(_MAX_WINDOW_BATCHES, _MAX_WINDOW_KEYS // step))
        for first, held_step, held_batched, _ in self._windows:
            if held_batched and held_step == step:
                if (start - first) % step:
                    break  # a record or a batch of another size moved the grid
                span = per_window * step
                return first + (start - first) // span * span, per_window
        return start, 1


_Window = tuple[int, int, bool, list[jax.Array]]


def _find(windows: tuple[_Window, ...], start: int, step: int, batched: bool) -> jax.Array | None:
    for first, held_step, held_batched, items in windows:
        offset = start - first
        same = held_step == step and held_batched == batched
        if same and 0 <= offset < len(items) * step and offset % step == 0:
            return items[offset // step]
    return None


_STREAMS: IdentityCache[KeyStream] = IdentityCache()
"""Each stream key's :class:`KeyStream`, so that consecutive records share its window."""


_last: KeyStream | None = None
"""The most recently used :class:`KeyStream`: a record stream looks up one key over and
over, and this spares it the cache's lock."""


def key_stream(key: Any) -> KeyStream | None:
    """The :class:`KeyStream` of ``key``, found by identity (key arrays are immutable);
    ``None`` when ``key`` is not one concrete typed key."""
    global _last
    last = _last  # one read: a KeyStream whose own key is compared, never a stale pair
    if last is not None and last.key is key:
        return last
    stream = _STREAMS.get(key)
    if stream is None:
        if not is_key(key) or key.shape != () or isinstance(key, jax.core.Tracer):
            return None
        stream = _STREAMS.put(key, KeyStream(key))
    _last = stream
    return stream


def reservable(stream: nnx.RngStream) -> tuple[KeyStream, int] | None:
    """The :class:`KeyStream` of an ``nnx.RngStream``'s key and its next count, where the
    stream is one concrete key and a count held as a host or device array in Variables
    without hooks; ``None`` otherwise (a split stream, tracers inside a transform, a
    ``Ref``, hooks), and the caller takes the path that calls the stream.

    Reads only; :func:`advance` writes. Call both under the manager's position lock.
    """
    count_var, key_var = stream.count, stream.key
    if has_hooks(count_var) or has_hooks(key_var):
        return None
    # Flax types a stream's count as a jax.Array; advance() stores a host NumPy array.
    count: object = count_var.get_raw_value()
    if type(count) is not np.ndarray and (
        not isinstance(count, jax.Array) or isinstance(count, jax.core.Tracer)
    ):
        return None
    if count.shape != ():
        return None
    keys = key_stream(key_var.get_raw_value())
    if keys is None:
        return None
    return keys, int(count)


def advance(stream: nnx.RngStream, first: int, n: int) -> None:
    """Sets the stream's count to ``first + n`` (mod 2**32), as ``n`` calls of the stream
    would: a host NumPy ``uint32`` array, so that advancing it costs no device operation."""
    count: nnx.Variable[Any] = stream.count  # Flax types it Variable[jax.Array]
    count.set_raw_value(np.array((first + n) & 0xFFFFFFFF, dtype=np.uint32))
