"""RNG key fields: recognising typed keys, checking a key field, splitting a key.

The one implementation of ``split_rng`` behind ``Metadata.split_rng``,
``RecordMetadata.split_rng`` and ``split_rng_tree``, the one ``is_key`` of the package
(the checkpoint layer uses it too), and the one ``fold_in`` of many counts (records' keys,
in windows and in batches).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def is_key(value: Any) -> bool:
    """Whether ``value`` is a typed JAX PRNG key array (``jax.random.key``), concrete or traced.

    Examples:
        >>> import jax
        >>> from datarax.core._rng import is_key
        >>> is_key(jax.random.key(0)), is_key(jax.random.PRNGKey(0))
        (True, False)
    """
    return isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key)


VMAP_SAFE_IMPLS = frozenset({"threefry2x32", "rbg"})
"""Key impls whose ``fold_in`` under ``jax.vmap`` gives the keys one ``fold_in`` per count
gives. ``unsafe_rbg``'s does not (its ``rng_bit_generator`` batches to other bits), and a
custom impl is not known to."""


def fold_in_each(key: jax.Array, counts: ArrayLike) -> jax.Array:
    """``fold_in(key, c)`` for each ``c`` of the 1-D ``counts``, stacked: bit-identical to
    one ``jax.random.fold_in`` per count (what an ``nnx.RngStream`` returns), for every key
    impl. Vectorised with ``vmap`` for :data:`VMAP_SAFE_IMPLS`, one by one (``lax.map``)
    for others. ``key`` is a typed key, or a raw key of JAX's default impl.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from datarax.core._rng import fold_in_each
        >>> key = jax.random.key(0, impl="unsafe_rbg")
        >>> keys = fold_in_each(key, jnp.arange(3, dtype=jnp.uint32))
        >>> bool((jax.random.key_data(keys[2]) == jax.random.key_data(
        ...     jax.random.fold_in(key, 2))).all())
        True
    """
    typed = key if is_key(key) else jax.random.wrap_key_data(key)  # a raw key: the default impl
    keys: jax.Array
    if str(jax.random.key_impl(typed)) in VMAP_SAFE_IMPLS:
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, counts)
    else:
        keys = jax.lax.map(lambda count: jax.random.fold_in(key, count), counts)
    return keys


def check_rng_key(value: Any) -> None:
    """Checks that ``value`` is ``None``, a typed key array or a raw ``uint32`` key array."""
    if value is None or is_key(value):
        return
    if isinstance(value, jax.Array | np.ndarray) and value.dtype == np.uint32:
        return
    found = getattr(value, "dtype", type(value).__name__)
    raise TypeError(
        "rng_key must be None, a typed key (jax.random.key) or a raw uint32 key "
        f"(jax.random.PRNGKey), got {found}: {value!r}."
    )


def check_num(value: Any) -> int:
    """Checks the ``num`` of a split: a non-negative Python or NumPy ``int``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"num must be a non-negative int, got {type(value).__name__}: {value!r}.")
    if value < 0:
        raise ValueError(f"num must be a non-negative int, got {value}.")
    return int(value)


def split_rng(rng_key: jax.Array | None, num: int = 2) -> list[jax.Array | None]:
    """Splits ``rng_key`` into ``num`` keys.

    Args:
        rng_key: A typed or raw key, or ``None``.
        num: How many keys, ``>= 0``.

    Returns:
        ``list(jax.random.split(rng_key, num))``, or ``[None] * num`` without a key.

    Raises:
        TypeError: ``num`` is not an int.
        ValueError: ``num`` is negative.

    Examples:
        >>> import jax
        >>> from datarax.core._rng import split_rng
        >>> len(split_rng(jax.random.key(0), 3)), split_rng(None, 2)
        (3, [None, None])
    """
    num = check_num(num)
    if rng_key is None:
        return [None] * num
    return list(jax.random.split(rng_key, num))
