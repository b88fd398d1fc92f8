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
constant, ``arange``) are saved as ``"fill": [start, step]``, not element by element."""


def progression(start: int, step: int, shape: Any, dtype: np.dtype) -> np.ndarray:
    """``start + step * arange`` of ``shape``, computed in ``dtype`` (wrapping like it).

    Raises:
        OverflowError: ``start`` or ``step`` does not fit ``dtype``.
    """
    count = int(np.prod(shape, dtype=np.int64))
    if step == 0:
        return np.full(shape, dtype.type(start), dtype)
    out = np.arange(count, dtype=dtype)
    if step != 1:
        out *= dtype.type(step)
    out += dtype.type(start)
    return out.reshape(shape)


def find_progression(array: np.ndarray) -> list[int] | None:
    """``[start, step]`` if the integer ``array`` is exactly :func:`progression` of them."""
    if array.dtype.kind not in "iu" or array.size < FILL_MIN_SIZE:
        return None
    flat = array.reshape(-1)
    start, step = int(flat[0]), int(flat[1]) - int(flat[0])
    try:
        candidate = progression(start, step, flat.shape, array.dtype)
    except OverflowError:
        return None
    return [start, step] if np.array_equal(candidate, flat) else None


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
            start, step = entry["fill"]
            if dtype.kind not in "iu" or type(start) is not int or type(step) is not int:
                raise ValueError(f"bad fill {entry['fill']} of dtype {dtype}")
            return progression(start, step, shape, dtype)
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
        raise MetadataCheckpointError(
            f"{where}: cannot rebuild a key of impl {impl!r} from data of shape "
            f"{np.shape(data)} ({e})."
        ) from e
