"""Input validation and exact equality shared by the metadata classes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core._rng import is_key


def check_counter(name: str, value: Any, *, optional: bool = False) -> None:
    """Checks that ``value`` is a non-negative ``int`` or an integer array.

    Raises:
        TypeError: ``value`` is a bool, a float, ``None`` (unless ``optional``) or no integer.
        ValueError: ``value`` is a negative Python or NumPy integer.
    """
    accepted = "an int or an integer array" + (" or None" if optional else "")
    if value is None:
        if optional:
            return
        raise TypeError(f"{name} must be {accepted}, got None.")
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be {accepted}, got the bool {value!r}.")
    if isinstance(value, int | np.integer):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
        return
    if isinstance(value, jax.Array | np.ndarray) and jnp.issubdtype(value.dtype, jnp.integer):
        return
    found = getattr(value, "dtype", type(value).__name__)
    raise TypeError(f"{name} must be {accepted}, got {found}: {value!r}.")


def check_source_info(value: Any) -> None:
    """Checks that ``source_info`` is ``None`` or a ``dict``."""
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"source_info must be a dict or None, got {type(value).__name__}.")


def _leaf_equal(x: Any, y: Any) -> bool:
    if isinstance(x, jax.Array | np.ndarray) or isinstance(y, jax.Array | np.ndarray):
        if not isinstance(x, jax.Array | np.ndarray) or not isinstance(y, jax.Array | np.ndarray):
            return False
        if is_key(x) or is_key(y):
            if not (is_key(x) and is_key(y)):
                return False
            if jax.random.key_impl(x) != jax.random.key_impl(y):
                return False
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        return x.dtype == y.dtype and x.shape == y.shape and bool(np.array_equal(x, y))
    return type(x) is type(y) and x == y


def tree_equal(a: Any, b: Any) -> bool:
    """Exact equality of two pytrees: same structure, same leaf types, dtypes and values."""
    # jax annotates treedefs as PyTreeDef, an alias mypy cannot resolve; they compare as objects.
    tree_a: object
    tree_b: object
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    return tree_a == tree_b and all(map(_leaf_equal, leaves_a, leaves_b))
