"""RNG key fields: recognising typed keys, checking a key field, splitting a key.

The one implementation of ``split_rng`` behind ``Metadata.split_rng``,
``RecordMetadata.split_rng`` and ``split_rng_tree``, and the one ``is_key`` of the package
(the checkpoint layer uses it too).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_key(value: Any) -> bool:
    """Whether ``value`` is a typed JAX PRNG key array (``jax.random.key``), concrete or traced.

    Examples:
        >>> import jax
        >>> from datarax.core._rng import is_key
        >>> is_key(jax.random.key(0)), is_key(jax.random.PRNGKey(0))
        (True, False)
    """
    return isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key)


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
