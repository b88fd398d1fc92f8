"""``jax.jit`` that keeps the signature of the function it compiles, for the type checker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar, cast

import jax

P = ParamSpec("P")
R = TypeVar("R")


def typed_jit(
    *, static_argnums: int | Sequence[int] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator: ``jax.jit(fun, static_argnums=...)``, typed as ``fun`` itself.

    ``jax.jit`` returns a ``JitWrapped`` whose ``__call__`` takes and returns anything, so
    every jitted call would be unchecked. The object returned is ``jax.jit``'s own, unchanged
    (nothing wraps it: no cost per call); only its static type is ``fun``'s.

    Examples:
        >>> import jax.numpy as jnp
        >>> @typed_jit(static_argnums=1)
        ... def scale(x: jax.Array, factor: int) -> jax.Array:
        ...     return x * factor
        >>> scale(jnp.arange(3), 2)
        Array([0, 2, 4], dtype=int32)
    """

    def decorate(fun: Callable[P, R]) -> Callable[P, R]:
        return cast(Callable[P, R], jax.jit(fun, static_argnums=static_argnums))

    return decorate
