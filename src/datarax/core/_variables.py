"""Reading and writing ``nnx.Variable`` values: Flax's public API, and one rule for hooks.

The rule: a Variable with an ``on_get_value`` or ``on_set_value`` hook (or of a type that
overrides ``get_value`` or ``set_value``) is always read with
``get_value()`` and written with ``set_value()``, so that its hooks run; any other Variable
is read with ``get_raw_value()`` (no copy) and written with ``set_raw_value()`` (no copy,
but Flax's check that it is not updated from another trace level still runs). Both are
Flax's public API (0.12.8); nothing here touches a Variable's private attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

HOOKS = ("on_get_value", "on_set_value")
"""The Variable metadata entries that make a Variable go through ``get_value``/``set_value``."""


_GET_VALUE = nnx.Variable.get_value
_SET_VALUE = nnx.Variable.set_value
_PLAIN_TYPES: set[type] = set()
"""Variable types seen not to override ``get_value``/``set_value`` (a set lookup costs a
record less than the two attribute lookups)."""


def has_hooks(variable: nnx.Variable[Any]) -> bool:
    """Whether ``variable`` has an ``on_get_value`` or ``on_set_value`` hook, or is of a
    Variable type that overrides ``get_value`` or ``set_value`` (what Flax recommends in
    place of hooks): either way, its reads and writes must go through those methods."""
    cls = type(variable)
    if cls not in _PLAIN_TYPES:
        if cls.get_value is not _GET_VALUE or cls.set_value is not _SET_VALUE:
            return True
        _PLAIN_TYPES.add(cls)
    metadata = variable.get_metadata()
    return "on_get_value" in metadata or "on_set_value" in metadata


def read(variable: nnx.Variable[Any]) -> Any:
    """``variable``'s value, as a copy the caller may keep: through ``get_value`` (its hooks
    run, its copy is the caller's) where it has hooks, else the raw value with its mutable
    containers (NumPy arrays, dicts) copied."""
    if has_hooks(variable):
        return variable.get_value()
    value = variable.get_raw_value()
    if isinstance(value, np.ndarray):
        return value.copy()
    if type(value) is dict:
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in value.items()}
    return value
