"""Hashable wrapper for ``source_info``, the static (aux-data) part of metadata pytrees."""

from __future__ import annotations

from typing import Any


def _freeze(value: Any) -> Any:
    """A hashable image of ``value`` that keeps types apart (``1`` vs ``1.0``, list vs tuple).

    Raises:
        TypeError: ``value`` holds something with no frozen image.
    """
    kind = type(value)
    if value is None or kind in (bool, int, str, bytes):
        return (kind, value)
    if kind is float:
        return (float, value.hex())  # hex keeps nan, inf and -0.0 apart and equal to themselves
    if kind is dict:
        return (dict, tuple((_freeze(k), _freeze(v)) for k, v in value.items()))
    if kind in (list, tuple):
        return (kind, tuple(_freeze(v) for v in value))
    raise TypeError(f"no frozen image for {kind.__name__}")


class StaticInfo:
    """``source_info`` as pytree aux data: hashable, and equal only to an equal value of the
    same types, so a jit cache hit never hands back a ``source_info`` of other types.

    Values with no frozen image (arrays, arbitrary objects) compare by identity.
    """

    __slots__ = ("_frozen", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        try:
            self._frozen: Any = _freeze(value)
        except TypeError:
            self._frozen = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticInfo):
            return NotImplemented
        if self._frozen is None or other._frozen is None:
            return self.value is other.value
        return bool(self._frozen == other._frozen)

    def __hash__(self) -> int:
        return hash(self._frozen) if self._frozen is not None else id(self.value)

    def __repr__(self) -> str:
        return f"StaticInfo({self.value!r})"
