"""How a template manager is built differently from a saved one (no I/O).

A restore may be given a template, ``MetadataManagerRestore(manager)``: the saved manager
must have been built like it (same ``track_batches``, same ``nnx.Rngs`` streams, each key
of the same kind and shape). Counters, keys and counts may differ: those are what a restore
brings back. :func:`built_alike` says, in one cheap pass over the template's keys, when
there is certainly no difference; :func:`manager_differences` lists every difference, for
the error message.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from datarax.core._lock import POSITION_LOCK
from datarax.core._manager import MetadataManager
from datarax.core._position import Position
from datarax.core._rng import is_key
from datarax.core._variables import has_hooks


def _key_kind(key: Any) -> tuple[bool, str | None, tuple[int, ...]]:
    if is_key(key):
        return True, str(jax.random.key_impl(key)), tuple(key.shape)
    return False, None, tuple(np.shape(key))


def _kind_text(typed: bool, impl: str | None) -> str:
    return f"a typed {impl} key" if typed else "a raw key"


def manager_differences(template: Position, saved: Position) -> list[str]:
    """How a manager at ``template`` is built differently from the saved one: its
    ``track_batches``, its stream names, and each stream's key kind (typed or raw, impl) and
    shape. Counters, keys and counts may differ: those are what a restore brings back.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import read_position
        >>> from datarax.checkpoint.manager_template import manager_differences
        >>> saved = read_position(MetadataManager(rngs=nnx.Rngs(metadata=0)))
        >>> template = read_position(MetadataManager(rngs=nnx.Rngs(metadata=1, noise=2)))
        >>> print(*manager_differences(template, saved))  # doctest: +NORMALIZE_WHITESPACE
        rngs streams: saved ['metadata'], this manager has ['metadata', 'noise'] (missing
        here: [], not saved: ['noise'])
    """
    found = []
    if saved.track_batches != template.track_batches:
        found.append(
            f"track_batches: saved {saved.track_batches}, this manager has {template.track_batches}"
        )
    mine, theirs = template.streams, saved.streams
    if mine is None or theirs is None:
        if (mine is None) != (theirs is None):
            have = "no rngs" if mine is None else f"streams {sorted(mine)}"
            was = "no rngs" if theirs is None else f"streams {sorted(theirs)}"
            found.append(f"rngs: saved {was}, this manager has {have}")
        return found
    if set(mine) != set(theirs):
        found.append(
            f"rngs streams: saved {sorted(theirs)}, this manager has {sorted(mine)} "
            f"(missing here: {sorted(set(theirs) - set(mine))}, "
            f"not saved: {sorted(set(mine) - set(theirs))})"
        )
    for name in sorted(set(mine) & set(theirs)):
        m_typed, m_impl, m_shape = _key_kind(mine[name].key)
        s_typed, s_impl, s_shape = _key_kind(theirs[name].key)
        if (m_typed, m_impl) != (s_typed, s_impl):
            found.append(
                f"rngs[{name!r}]: saved {_kind_text(s_typed, s_impl)}, this manager has "
                f"{_kind_text(m_typed, m_impl)}"
            )
        elif m_shape != s_shape:
            found.append(
                f"rngs[{name!r}]: saved a key of shape {s_shape}, this manager has shape {m_shape}"
            )
    return found


def built_alike(template: MetadataManager, saved: Position) -> bool:
    """Whether ``template`` is certainly built like the saved manager: the same
    ``track_batches``, stream names, and each stream's key of the same dtype (a typed
    key's dtype names its impl) and shape. ``False`` may still be no difference that
    :func:`manager_differences` reports (it does not compare a raw key's dtype): ask it.

    The template's keys are read as the manager reads them (through ``get_value`` where
    the Variable has hooks), under the manager's lock, and never copied.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.core._position import read_position
        >>> from datarax.checkpoint.manager_template import built_alike
        >>> saved = read_position(MetadataManager(rngs=nnx.Rngs(metadata=0)))
        >>> built_alike(MetadataManager(rngs=nnx.Rngs(metadata=5)), saved)
        True
        >>> built_alike(MetadataManager(rngs=nnx.Rngs(metadata=5), track_batches=True), saved)
        False
    """
    with POSITION_LOCK:
        if template.track_batches != saved.track_batches:
            return False
        rngs, theirs = template.rngs, saved.streams
        if rngs is None or theirs is None:
            return rngs is None and theirs is None
        mine = dict(rngs.items())
        if mine.keys() != theirs.keys():
            return False
        for name, stream in mine.items():
            var = stream.key
            key = var.get_value() if has_hooks(var) else var.get_raw_value()
            other = theirs[name].key
            if getattr(key, "dtype", None) != other.dtype or np.shape(key) != np.shape(other):
                return False
    return True
