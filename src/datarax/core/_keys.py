"""String record keys as fixed-size ``uint8`` arrays, so that keys are pytree leaves."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

MAX_KEY_LENGTH = 128
"""Length, in UTF-8 bytes, of an encoded record key (shorter keys are zero-padded)."""

TRACED_KEY = "<traced key: cannot be decoded inside a JAX transformation>"
"""What :attr:`Metadata.entry_key` says when the encoded key is a tracer."""


def encode_key_bytes(key: str) -> np.ndarray:
    """Encodes ``key`` as a zero-padded NumPy ``uint8`` array of shape ``(128,)``.

    Raises:
        TypeError: ``key`` is not a ``str``.
        ValueError: ``key`` is longer than 128 UTF-8 bytes or contains a NUL character
            (which the zero padding could not tell apart from the end of the key).
    """
    if not isinstance(key, str):
        raise TypeError(f"A record key must be a str, got {type(key).__name__}: {key!r}.")
    data = key.encode("utf-8")
    if len(data) > MAX_KEY_LENGTH:
        raise ValueError(
            f"Record key is {len(data)} UTF-8 bytes long; at most {MAX_KEY_LENGTH} are accepted "
            f"(keys are never truncated). Key starts with {key[:32]!r}."
        )
    if b"\x00" in data:
        raise ValueError(
            f"Record key {key!r} contains a NUL character, which cannot be told apart from "
            "the zero padding of the encoded key; use a key without '\\x00'."
        )
    out = np.zeros(MAX_KEY_LENGTH, dtype=np.uint8)
    out[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out


def encode_key(key: str) -> jax.Array:
    """Encodes ``key`` as a ``jax.Array`` of dtype ``uint8`` and shape ``(128,)``."""
    return jax.numpy.asarray(encode_key_bytes(key))


def decode_key(encoded: Any) -> str | None:
    """Decodes an encoded key back to its text.

    Returns ``None`` for ``None`` and :data:`TRACED_KEY` for a tracer, which holds no
    bytes to decode.
    """
    if encoded is None:
        return None
    if isinstance(encoded, jax.core.Tracer):
        return TRACED_KEY
    data = np.asarray(encoded)
    if data.dtype != np.uint8 or data.shape != (MAX_KEY_LENGTH,):
        raise ValueError(
            f"An encoded record key is a uint8 array of shape ({MAX_KEY_LENGTH},), "
            f"got dtype {data.dtype} and shape {data.shape}."
        )
    return data.tobytes().split(b"\x00", 1)[0].decode("utf-8")
