"""Host-side arrays and RNG keys as JSON values (base64 little-endian bytes), exactly."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from datarax.checkpoint.errors import MetadataCheckpointError

# Only plain numeric dtypes are written or read: never ``object`` (no pickle, ever).
_DTYPE_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64", "float16", "float32", "float64")  # fmt: skip
_DTYPES = {name: np.dtype(name) for name in _DTYPE_NAMES}


def check_dtype(dtype: np.dtype, where: str) -> None:
    """Raises unless ``dtype`` is one this format writes (bool, integer or float).

    Raises:
        MetadataCheckpointError: Any other dtype.
    """
    if np.dtype(dtype).name not in _DTYPES:
        raise MetadataCheckpointError(
            f"Cannot save {where}: arrays of dtype {dtype} are not supported (bool, integer "
            "and float arrays are). Nothing was written."
        )


def little_endian(array: Any) -> np.ndarray:
    """``array`` as a C-contiguous little-endian NumPy array (no copy when it is one)."""
    array = np.asarray(array)
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


FILL_MIN_SIZE = 16
"""Integer arrays of at least this many elements that are arithmetic progressions (a
constant, ``arange``), possibly with each value repeated (``arange(n) // 256``: the step
of consecutive batches of 256 records), are saved as ``"fill": [start, step]`` or
``[start, step, repeat]``, not element by element."""


def progression(start: int, step: int, shape: Any, dtype: np.dtype, repeat: int = 1) -> np.ndarray:
    """``start + step * (arange // repeat)`` of ``shape``, computed in ``dtype`` (wrapping
    like it): ``[start, start + step, ...]`` with each value ``repeat`` times.

    Raises:
        OverflowError: ``start`` or ``step`` does not fit ``dtype``.
    """
    count = int(np.prod(shape, dtype=np.int64))
    if step == 0:
        return np.full(shape, dtype.type(start), dtype)
    repeat = min(repeat, max(count, 1))  # the same values; never more than count made
    out = np.arange(-(-count // repeat), dtype=dtype)
    if step != 1:
        out *= dtype.type(step)
    out += dtype.type(start)
    if repeat > 1:
        out = np.repeat(out, repeat)[:count]
    return out.reshape(shape)


_CHUNK = 1 << 16


def _first_change(flat: np.ndarray) -> int | None:
    """The index of the first element that differs from ``flat[0]``, if any."""
    for i in range(0, flat.size, _CHUNK):
        changes = np.flatnonzero(flat[i : i + _CHUNK] != flat[0])
        if changes.size:
            return i + int(changes[0])
    return None


def wrapped(value: int, dtype: np.dtype) -> int:
    """``value`` wrapped into ``dtype``'s range, as the dtype's arithmetic wraps."""
    bits = 8 * dtype.itemsize
    value %= 1 << bits
    return value - (1 << bits) if dtype.kind == "i" and value >> (bits - 1) else value


def find_progression(array: np.ndarray) -> list[int] | None:
    """``[start, step]`` (or ``[start, step, repeat]``, ``repeat > 1``) if the integer
    ``array`` is exactly :func:`progression` of them.

    It compares a chunk at a time (element ``i`` of the progression is
    ``start + step * (i // repeat)`` wrapped into the dtype): no temporary as large as the
    array, which matters on the fresh threads Orbax saves on, where every large new array
    costs its page faults.
    """
    if array.dtype.kind not in "iu" or array.size < FILL_MIN_SIZE:
        return None
    flat, dtype = array.reshape(-1), array.dtype
    change = 1 if flat[1] != flat[0] else _first_change(flat)
    repeat = 1 if change is None else change
    start = int(flat[0])
    step = 0 if change is None else int(flat[repeat]) - start
    runs, per_chunk = -(-flat.size // repeat), max(1, _CHUNK // repeat)
    try:
        if repeat == 1 and flat.size <= _CHUNK:  # small: one comparison
            same = np.array_equal(progression(start, step, flat.shape, dtype), flat)
            return [start, step] if same else None
        for k in range(0, runs, per_chunk):  # runs k to k + len(values), and their elements
            first = wrapped(start + step * k, dtype)
            values = progression(first, step, (min(per_chunk, runs - k),), dtype)
            part = flat[k * repeat : (k + len(values)) * repeat]
            whole = part.size // repeat
            if not (part[: whole * repeat].reshape(whole, repeat) == values[:whole, None]).all():
                return None
            if part.size % repeat and (part[whole * repeat :] != values[whole]).any():
                return None
    except OverflowError:
        return None
    return [start, step] if repeat == 1 else [start, step, repeat]


def encode_array(array: np.ndarray, where: str) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}`` for a NumPy array: its bytes, little-endian, base64.

    Raises:
        MetadataCheckpointError: A dtype other than bool, integer or float.
    """
    check_dtype(array.dtype, where)
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(little_endian(array).tobytes()).decode("ascii"),
    }


def decode_array(entry: Any, where: str, blob: Any = None) -> np.ndarray:
    """Inverse of :func:`encode_array`, or the array at ``entry["blob"] = [offset, nbytes]``
    of ``blob`` (the bytes of the process's ``.bin`` file): a writeable NumPy array in
    native byte order that owns its memory (or shares only ``blob``'s)."""
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = tuple(entry["shape"])
        if not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"bad shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if "fill" in entry:
            start, step, *repeat = entry["fill"]
            if dtype.kind not in "iu" or not all(type(n) is int for n in entry["fill"]):
                raise ValueError(f"bad fill {entry['fill']} of dtype {dtype}")
            if repeat and repeat[0] < 2:
                raise ValueError(f"bad fill repeat {repeat[0]}")
            return progression(start, step, shape, dtype, *repeat)
        if "blob" in entry:
            offset, nbytes = entry["blob"]
            if blob is None or nbytes != count * dtype.itemsize or offset + nbytes > len(blob):
                raise ValueError(f"blob range {entry['blob']} does not hold {dtype}{list(shape)}")
            out = np.frombuffer(blob, dtype.newbyteorder("<"), count, offset).reshape(shape)
            return out if out.dtype.isnative else out.astype(dtype)
        data = base64.b64decode(entry["data"], validate=True)
        out = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise MetadataCheckpointError(
            f"{where}: not an encoded array ({str(e)[:100]}); the item is damaged or was "
            "written by another program."
        ) from e
    return out.astype(dtype)  # native byte order, and a copy that owns its memory


@functools.cache
def _host_wrapper(impl: str) -> Callable[[np.ndarray], jax.Array]:
    return jax.jit(functools.partial(jax.random.wrap_key_data, impl=impl))


@functools.cache
def _rows_wrapper(impl: str) -> Callable[[np.ndarray], tuple[jax.Array, ...]]:
    def wrap_rows(data: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(jax.random.wrap_key_data(row, impl=impl) for row in data)

    return jax.jit(wrap_rows)


KEYS_PER_CALL = 16
"""The most keys :func:`wrap_keys` builds in one call. Its jitted function returns one
output per key, and compiles once per impl, key shape and number of keys up to this many
(more keys are wrapped this many at a time, the last call padded), each on the first
restore of its kind: one output costs about 2 µs, against 5 µs for a dispatch of its own."""


def wrap_key(data: Any, impl: str, where: str) -> jax.Array:
    """``jax.random.wrap_key_data(data, impl=impl)``, a failure reported as a checkpoint error.

    Host (NumPy) data goes through a jitted wrapper: one dispatch instead of a transfer and
    an eager op, which is most of the cost of restoring a manager.
    """
    try:
        if isinstance(data, np.ndarray):
            return _host_wrapper(impl)(data)
        key: jax.Array = jax.random.wrap_key_data(data, impl=impl)  # jax leaves it unannotated
        return key
    except (TypeError, ValueError) as e:
        raise _unwrappable(data, impl, where, e) from e


def wrap_keys(data: np.ndarray, impl: str, where: str) -> list[jax.Array]:
    """The keys of ``data[0]``, ``data[1]``, ...: ``wrap_key`` of each row, in one jitted
    call per :data:`KEYS_PER_CALL` rows.

    Examples:
        >>> import numpy as np
        >>> from datarax.checkpoint.arrays import wrap_keys
        >>> keys = wrap_keys(np.array([[0, 1], [0, 2]], np.uint32), "threefry2x32", "doc")
        >>> [k.shape for k in keys], [int(jax.random.key_data(k)[1]) for k in keys]
        ([(), ()], [1, 2])
    """
    wrapper = _rows_wrapper(impl)
    keys: list[jax.Array] = []
    try:
        for start in range(0, len(data), KEYS_PER_CALL):
            rows = data[start : start + KEYS_PER_CALL]
            if start and len(rows) < KEYS_PER_CALL:  # padded: one compilation, however many
                rows = np.concatenate([rows, np.zeros_like(data[: KEYS_PER_CALL - len(rows)])])
            keys.extend(wrapper(rows)[: len(data) - start])
    except (TypeError, ValueError) as e:
        raise _unwrappable(data[0] if len(data) else data, impl, where, e) from e
    return keys


def _unwrappable(data: Any, impl: str, where: str, e: Exception) -> MetadataCheckpointError:
    return MetadataCheckpointError(
        f"{where}: cannot rebuild a key of impl {impl!r} from data of shape {np.shape(data)} ({e})."
    )
