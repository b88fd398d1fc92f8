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


def host_count(stream: Any) -> int | None:
    """An ``nnx.RngStream``'s count as an ``int``; ``None`` where it is not one concrete
    count (a split stream, a tracer inside a transform, a ``Ref``)."""
    count = stream.count._raw_value
    if type(count) is np.ndarray and count.shape == ():
        return int(count)
    if (
        isinstance(count, jax.Array)
        and not isinstance(count, jax.core.Tracer)
        and count.shape == ()
    ):
        return int(count)
    return None
