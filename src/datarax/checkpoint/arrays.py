"""Host-side arrays and RNG keys as JSON values (base64 little-endian bytes), exactly."""

from __future__ import annotations

import base64
import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.checkpoint.errors import MetadataCheckpointError

# Only plain numeric dtypes are written or read: never ``object`` (no pickle, ever).
_DTYPE_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64", "float16", "float32", "float64")  # fmt: skip
_DTYPES = {name: np.dtype(name) for name in _DTYPE_NAMES}


def is_key(value: Any) -> bool:
    """Whether ``value`` is a typed JAX PRNG key array (``jax.random.key``)."""
    return isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key)


def encode_array(array: np.ndarray, where: str) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}`` for a NumPy array: its bytes, little-endian, base64.

    Raises:
        MetadataCheckpointError: A dtype other than bool, integer or float.
    """
    dtype = array.dtype
    if dtype.name not in _DTYPES:
        raise MetadataCheckpointError(
            f"Cannot save {where}: arrays of dtype {dtype} are not supported (bool, integer "
            "and float arrays are). Nothing was written."
        )
    data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    return {
        "dtype": dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def decode_array(entry: Any, where: str) -> np.ndarray:
    """Inverse of :func:`encode_array`; a new, writeable NumPy array in native byte order."""
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = tuple(entry["shape"])
        data = base64.b64decode(entry["data"], validate=True)
        if not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"bad shape {shape}")
        out = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise MetadataCheckpointError(
            f"{where}: not an encoded array ({e}); the item is damaged or was written by "
            "another program."
        ) from e
    return out.astype(dtype)  # native byte order, and a copy that owns its memory


# The manager's stream keys rarely change between saves; reading a key's data costs a device
# round trip, so the last few are remembered by identity (the key is kept alive with its
# entry, so its id cannot be reused while cached).
_key_cache: dict[int, tuple[jax.Array, str | None, np.ndarray]] = {}
_key_lock = threading.Lock()
_KEY_CACHE_SIZE = 64


def key_host_data(key: jax.Array) -> tuple[str, np.ndarray]:
    """``(impl, key data)`` of a concrete typed key, the data as a read-only NumPy array."""
    hit = _key_cache.get(id(key))
    if hit is not None and hit[0] is key:
        return hit[1], hit[2]  # type: ignore[return-value]
    impl = str(jax.random.key_impl(key))
    data = np.asarray(jax.random.key_data(key))
    data.flags.writeable = False
    with _key_lock:
        if len(_key_cache) >= _KEY_CACHE_SIZE:
            _key_cache.pop(next(iter(_key_cache)))
        _key_cache[id(key)] = (key, impl, data)
    return impl, data


@functools.cache
def _host_wrapper(impl: str) -> Any:
    return jax.jit(functools.partial(jax.random.wrap_key_data, impl=impl))


def wrap_key(data: Any, impl: str, where: str) -> jax.Array:
    """``jax.random.wrap_key_data(data, impl=impl)``, a failure reported as a checkpoint error.

    Host (NumPy) data goes through a jitted wrapper: one dispatch instead of a transfer and
    an eager op, which is most of the cost of restoring a manager.
    """
    try:
        if isinstance(data, np.ndarray):
            return _host_wrapper(impl)(data)
        return jax.random.wrap_key_data(data, impl=impl)
    except (TypeError, ValueError) as e:
        raise MetadataCheckpointError(
            f"{where}: cannot rebuild a key of impl {impl!r} from data of shape "
            f"{np.shape(data)} ({e})."
        ) from e
