"""String record keys as fixed-size ``uint8`` arrays, so that keys are pytree leaves.

One key is a ``uint8`` array of shape ``(128,)``: its UTF-8 bytes, zero-padded. A batch of
keys (a NumPy array of ``str`` of any shape) is a ``uint8`` array of shape
``(*shape, 128)``, one row per key.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

MAX_KEY_LENGTH = 128
"""Length, in UTF-8 bytes, of an encoded record key (shorter keys are zero-padded)."""

TRACED_KEY = "<traced key: cannot be decoded inside a JAX transformation>"
"""What :attr:`Metadata.entry_key` says when the encoded key is a tracer."""

ABSTRACT_KEY = "<abstract key: a ShapeDtypeStruct holds no bytes to decode>"
"""What :attr:`Metadata.entry_key` says when the encoded key is a ``jax.ShapeDtypeStruct``
(a Metadata returned by ``jax.eval_shape``)."""

REMOTE_KEY = "<key held by other processes: cannot be decoded on this one>"
"""What :attr:`Metadata.entry_key` says when the encoded key is a global array that is not
fully addressable from this process."""


def encode_key_bytes(key: object) -> np.ndarray:
    """Encodes ``key`` as a zero-padded NumPy ``uint8`` array of shape ``(128,)``.

    Raises:
        TypeError: ``key`` is not a ``str``.
        ValueError: ``key`` is longer than 128 UTF-8 bytes, contains a NUL character
            (which the zero padding could not tell apart from the end of the key) or a lone
            surrogate (which UTF-8 cannot encode).
    """
    if not isinstance(key, str):
        raise TypeError(f"A record key must be a str, got {type(key).__name__}: {key!r}.")
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"Record key {key[:32]!r} holds a lone surrogate ({key[e.start]!r} at position "
            f"{e.start}), which UTF-8 cannot encode; use a key of valid Unicode text."
        ) from None
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


def encode_key_rows(keys: np.ndarray) -> np.ndarray:
    """Encodes a NumPy array of ``str`` keys as ``uint8`` rows of shape ``(*keys.shape, 128)``."""
    rows = [encode_key_bytes(str(k)) for k in keys.reshape(-1)]
    encoded = np.stack(rows) if rows else np.zeros((0, MAX_KEY_LENGTH), np.uint8)
    return encoded.reshape(*keys.shape, MAX_KEY_LENGTH)


def encode_key(key: str | np.ndarray) -> jax.Array:
    """Encodes a key (shape ``(128,)``) or a NumPy array of ``str`` keys (shape
    ``(*keys.shape, 128)``) as a ``jax.Array`` of dtype ``uint8``.

    Raises:
        TypeError: Neither a ``str`` nor a NumPy array of ``str``.
        ValueError: A key longer than 128 UTF-8 bytes or with a NUL character.
    """
    if isinstance(key, np.ndarray) and key.dtype.kind == "U":
        return jax.numpy.asarray(encode_key_rows(key))
    return jax.numpy.asarray(encode_key_bytes(key))


_CHUNK = 1 << 16  # rows checked at once: bounds the temporaries at a few MiB


def check_encoded(data: np.ndarray) -> None:
    """Checks that every row of ``data`` (``uint8``, shape ``(..., 128)``) is what
    :func:`encode_key_bytes` makes: UTF-8 text, then only zero bytes. Vectorised, so that
    a batch of a million keys is checked in milliseconds.

    Raises:
        ValueError: Naming the first bad row.
    """
    rows = data.reshape(-1, MAX_KEY_LENGTH)
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        nonzero = chunk != 0
        # A row starting with a UTF-8 continuation byte could join its neighbour's last
        # character; with none, the rows are valid UTF-8 exactly when their bytes are.
        if (
            not (nonzero[:, 1:] > nonzero[:, :-1]).any()  # a byte after the padding
            and not ((chunk[:, 0] & 0xC0) == 0x80).any()
            and _is_utf8(chunk)
        ):
            continue
        for i, row in enumerate(chunk):
            text = row.tobytes().rstrip(bytes(1))
            if bytes(1) in text or (row[0] & 0xC0) == 0x80 or not _is_utf8(row):
                raise ValueError(
                    f"Encoded record key {start + i} is not a zero-padded UTF-8 key (as "
                    f"key= encodes one): {text!r}."
                )


def _is_utf8(data: np.ndarray) -> bool:
    try:
        data.tobytes().decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def decode_key(encoded: Any) -> str | np.ndarray | None:
    """Decodes an encoded key back to its text.

    Returns ``None`` for ``None``, :data:`TRACED_KEY` for a tracer and
    :data:`ABSTRACT_KEY` for a ``ShapeDtypeStruct`` (which hold no bytes to decode),
    :data:`REMOTE_KEY` for a global array not fully addressable here, a
    ``str`` for shape ``(128,)``, and a NumPy array of ``str`` of shape
    ``encoded.shape[:-1]`` for a batch of keys.

    Raises:
        ValueError: Not a ``uint8`` array of shape ``(..., 128)``, or rows that
            :func:`check_encoded` refuses.
    """
    if encoded is None:
        return None
    if isinstance(encoded, jax.core.Tracer):
        return TRACED_KEY
    if isinstance(encoded, jax.ShapeDtypeStruct):
        return ABSTRACT_KEY
    if isinstance(encoded, jax.Array) and not encoded.is_fully_addressable:
        return REMOTE_KEY
    data = np.asarray(encoded)
    if data.dtype != np.uint8 or data.shape[-1:] != (MAX_KEY_LENGTH,):
        raise ValueError(
            f"An encoded record key is a uint8 array of shape (..., {MAX_KEY_LENGTH}), "
            f"got dtype {data.dtype} and shape {data.shape}."
        )
    check_encoded(data)
    if data.ndim == 1:
        return _text(data)
    rows = [_text(row) for row in data.reshape(-1, MAX_KEY_LENGTH)]
    return np.array(rows, dtype=str).reshape(data.shape[:-1])


def _text(row: np.ndarray) -> str:
    return row.tobytes().split(b"\x00", 1)[0].decode("utf-8")
