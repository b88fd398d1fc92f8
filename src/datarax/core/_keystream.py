"""Lazily derived ``nnx.Rngs`` stream keys: ``fold_in(stream_key, count)``, computed in windows.

One eager JAX op costs tens of microseconds, so deriving a key per record as it is created
would bound a pipeline at a few thousand records per second. Records instead carry a
reference ``(KeyStream, count)``; the first read of a record's key derives, in one jitted
call, a window of keys for consecutive counts and hands out the rest from that window. Each
key is bit-identical to ``jax.random.fold_in(stream_key, count)``, which is what calling the
``nnx.Rngs`` stream returns.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core._checks import is_key_array

STREAM = "metadata"
"""Name of the ``nnx.Rngs`` stream that record keys are drawn from."""

_FIRST_WINDOW = 8
_MAX_WINDOW = 1024
_CACHE_SIZE = 64


@functools.partial(jax.jit, static_argnums=2)
def fold_in_range(key: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """``fold_in(key, c)`` for ``c`` in ``start, start + 1, ..., start + size - 1`` (mod 2**32)."""
    counts = start + jnp.arange(size, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, counts)


class KeyStream:
    """Caches the most recently derived window of keys of one stream key."""

    __slots__ = ("_window", "_window_size", "key")

    def __init__(self, key: jax.Array) -> None:
        self.key = key
        self._window: tuple[int, list[jax.Array]] = (0, [])
        self._window_size = _FIRST_WINDOW

    def get(self, count: int) -> jax.Array:
        """The key for ``count``: ``jax.random.fold_in(self.key, count)``."""
        start, keys = self._window
        offset = count - start
        if 0 <= offset < len(keys):
            return keys[offset]
        # Sequential readers get windows that double in size; a jump starts small again,
        # so that sparse readers never pay for many keys they do not read.
        size = min(self._window_size * 2, _MAX_WINDOW) if offset == len(keys) else _FIRST_WINDOW
        self._window_size = size
        keys = self.derive(count, size)
        self._window = (count, keys)
        return keys[0]

    def derive(self, start: int, size: int) -> list[jax.Array]:
        """``size`` keys for consecutive counts from ``start``, as separate arrays."""
        return list(fold_in_range(self.key, np.uint32(start), size))

    def derive_batch(self, start: int, size: int) -> jax.Array:
        """One key array of shape ``(size,)`` for consecutive counts from ``start``."""
        return fold_in_range(self.key, np.uint32(start), size)


_streams: dict[int, KeyStream] = {}
_lock = threading.Lock()


def key_stream(key: Any) -> KeyStream | None:
    """The :class:`KeyStream` of ``key``, found by identity (stream keys are immutable);
    ``None`` when ``key`` is not one concrete typed key."""
    stream = _streams.get(id(key))
    if stream is not None and stream.key is key:
        return stream
    if not is_key_array(key) or key.shape != () or isinstance(key, jax.core.Tracer):
        return None
    with _lock:
        if len(_streams) >= _CACHE_SIZE:
            _streams.pop(next(iter(_streams)))
        stream = _streams[id(key)] = KeyStream(key)
    return stream


def reserve_keys(stream: Any, n: int) -> tuple[KeyStream, int] | None:
    """Advances an ``nnx.RngStream``'s count by ``n`` and returns the :class:`KeyStream` of
    its key with the first count reserved: the keys of counts ``first .. first + n - 1``
    are what ``n`` calls of the stream would have returned.

    Returns ``None``, touching nothing, where the stream is not one concrete key and count
    (a split stream, tracers inside a transform, a ``Ref``).
    """
    count = stream.count._raw_value
    if type(count) is not np.ndarray and (
        not isinstance(count, jax.Array) or isinstance(count, jax.core.Tracer)
    ):
        return None
    if count.shape != ():
        return None
    keys = key_stream(stream.key._raw_value)
    if keys is None:
        return None
    first = int(count)
    # A host NumPy count: advancing it costs no device operation. The write bypasses
    # Variable.set_value, whose copy and checks would dominate a per-record call; the raw
    # value is a plain array here (not a Ref, not traced), which is all set_value updates.
    object.__setattr__(
        stream.count, "_raw_value", np.array((first + n) & 0xFFFFFFFF, dtype=np.uint32)
    )
    return keys, first
