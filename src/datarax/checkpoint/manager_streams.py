"""A manager document's ``rngs`` streams -> each stream's key and count, all at once.

A manager may hold a thousand streams. Checked and rebuilt one by one, each stream costs a
dozen field checks and a JAX dispatch for its key; but streams nearly always share one form
(typed keys of one impl and shape, a scalar count). :func:`decode_streams` therefore checks
every field of every stream as columns (types and ranges over all values at once), checks
one stream of each form field by field, and wraps the keys of each form in one JAX call.
Where anything is out of the ordinary it decodes stream by stream instead, so that what is
refused, and the message naming the field, are those of
:func:`~datarax.checkpoint.manager_fields.check_stream`.
"""

from __future__ import annotations

import math
import operator
from itertools import chain
from typing import Any

import jax
import numpy as np

from datarax.checkpoint.arrays import wrap_key, wrap_keys
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.manager_fields import (
    STREAM_FIELDS,
    UINT32_END,
    bad,
    check_stream,
)
from datarax.core._position import StreamPosition

_ORDER = ("typed", "impl", "key_shape", "key_data", "count_shape", "count")
_PRIVATE = operator.methodcaller("startswith", "_")
_TOGETHER_MIN = 4
"""Streams decoded by columns from this many on (below, the columns cost more than they
save)."""

_Form = tuple[bool, str | None, tuple[int, ...], int, tuple[int, ...], int]
"""A stream's typed, impl, key shape, key data length, count shape and count length."""


def decode_stream(where: str, name: str, s: dict[str, Any]) -> StreamPosition:
    """One stream, as :func:`~datarax.checkpoint.manager_fields.check_stream` returned it.

    Raises:
        MetadataCheckpointError: Key data that does not hold whole keys of its shape, or
            that JAX cannot wrap as a key of its impl.
    """
    count = np.array(s["count"], dtype=np.uint32).reshape(s["count_shape"])
    data = np.array(s["key_data"], dtype=np.uint32)
    if not s["typed"]:
        return StreamPosition(jax.numpy.asarray(data.reshape(s["key_shape"])), count)
    keys = math.prod(s["key_shape"])
    if data.size == 0 or keys == 0 or data.size % keys:
        expected = f"whole keys of shape {s['key_shape']}"
        raise bad(where, f"rngs[{name!r}].key_data", expected, s["key_data"])
    key = wrap_key(data.reshape(*s["key_shape"], -1), s["impl"], f"{where}: rngs[{name!r}]")
    return StreamPosition(key, count)


def decode_streams(where: str, rngs: dict[Any, Any]) -> dict[str, StreamPosition]:
    """Every stream of a manager document's ``rngs``, in the document's order.

    Args:
        where: The file the document was read from, for error messages.
        rngs: The document's ``rngs`` (a dict; its entries not yet checked).

    Returns:
        Each stream's key (typed, or a raw ``uint32`` array) and count (a NumPy ``uint32``
        array of its saved shape), exactly as saved.

    Raises:
        MetadataCheckpointError: The first stream, in the document's order, with a field
            that is malformed (named), or a key that JAX cannot rebuild.

    Examples:
        >>> from datarax.checkpoint.manager_streams import decode_streams
        >>> entry = {"typed": True, "impl": "threefry2x32", "key_shape": [],
        ...          "key_data": [0, 7], "count_shape": [], "count": [3]}
        >>> streams = decode_streams("process_0.jsonl", {f"s{i}": entry for i in range(5)})
        >>> len(streams), int(streams["s4"].count), streams["s4"].key.shape
        (5, 3, ())
    """
    together = _decode_together(where, rngs) if len(rngs) >= _TOGETHER_MIN else None
    if together is not None:
        return together
    checked = {name: check_stream(where, name, entry) for name, entry in rngs.items()}
    return {name: decode_stream(where, name, s) for name, s in checked.items()}


def _columns(rngs: dict[Any, Any]) -> list[list[Any]] | None:
    """The streams' fields as columns (``_ORDER``), where every name is a stream name,
    every entry has exactly the stream fields, of the types a stream has, and every
    integer is a uint32; ``None`` otherwise."""
    names, entries = list(rngs), list(rngs.values())
    if not entries or set(map(type, names)) != {str} or set(map(type, entries)) != {dict}:
        return None
    if not all(map(str.isidentifier, names)) or any(map(_PRIVATE, names)):
        return None
    if set(map(len, entries)) != {len(STREAM_FIELDS)}:
        return None
    try:  # with as many keys as STREAM_FIELDS, a KeyError is the only way to differ
        columns = [[entry[field] for entry in entries] for field in _ORDER]
    except KeyError:
        return None
    typed, impl, key_shape, key_data, count_shape, count = columns
    lists = key_shape + key_data + count_shape + count
    if set(map(type, typed)) != {bool} or not set(map(type, impl)) <= {str, type(None)}:
        return None
    if set(map(type, lists)) != {list}:
        return None
    values = list(chain.from_iterable(lists))
    if values and (set(map(type, values)) != {int} or min(values) < 0 or max(values) >= UINT32_END):
        return None
    return columns


def _forms(where: str, names: list[str], columns: list[list[Any]]) -> dict[_Form, list[int]] | None:
    """The streams grouped by form, where one stream of each form passes
    :func:`check_stream` (then, with the column checks, every stream of the form does)
    and holds whole keys; ``None`` otherwise."""
    typed, impl, key_shape, key_data, count_shape, count = columns
    parts = (typed, impl, map(tuple, key_shape), map(len, key_data), map(tuple, count_shape),
             map(len, count))  # fmt: skip
    groups: dict[_Form, list[int]] = {}
    distinct = [set(part) for part in parts]
    if all(len(values) == 1 for values in distinct):  # the common case: one form
        form: Any = tuple(values.pop() for values in distinct)
        groups[form] = list(range(len(typed)))
    else:  # (a stream's form is built only here: a thousand tuples are worth sparing)
        forms = zip(typed, impl, map(tuple, key_shape), map(len, key_data),
                    map(tuple, count_shape), map(len, count), strict=True)  # fmt: skip
        for i, form in enumerate(forms):
            groups.setdefault(form, []).append(i)
    for form, members in groups.items():
        first = members[0]
        entry = dict(zip(_ORDER, (column[first] for column in columns), strict=True))
        try:
            check_stream(where, names[first], entry)
        except MetadataCheckpointError:
            return None
        is_typed, _, shape, size, _, _ = form
        if is_typed and (size == 0 or math.prod(shape) == 0 or size % math.prod(shape)):
            return None
    return groups


def _decode_together(where: str, rngs: dict[Any, Any]) -> dict[str, StreamPosition] | None:
    """:func:`decode_streams` by columns, or ``None`` where a stream is out of the ordinary
    (then nothing was decoded)."""
    columns = _columns(rngs)
    if columns is None:
        return None
    names = list(rngs)
    groups = _forms(where, names, columns)
    if groups is None:
        return None
    keys: list[Any] = [None] * len(names)
    counts: list[Any] = [None] * len(names)
    for (is_typed, impl, shape, _, count_shape, _), members in groups.items():
        count = np.array([columns[5][i] for i in members], dtype=np.uint32)
        count = count.reshape(len(members), *count_shape)
        data = np.array([columns[3][i] for i in members], dtype=np.uint32)
        data = data.reshape(len(members), *shape, *(() if not is_typed else (-1,)))
        try:
            made = _keys(data, is_typed, impl, f"{where}: rngs")
        except MetadataCheckpointError:
            return None
        for j, i in enumerate(members):
            keys[i], counts[i] = made[j], count[j, ...]
    return dict(zip(names, map(StreamPosition, keys, counts), strict=True))


def _keys(data: np.ndarray, typed: bool, impl: str | None, where: str) -> list[Any]:
    """The keys of ``len(data)`` streams of one form, from their key data (of shape
    ``(streams, *key_shape)`` for raw keys, ``(streams, *key_shape, -1)`` for typed)."""
    if not typed:
        return [jax.numpy.asarray(d) for d in data]
    assert impl is not None  # a typed form's impl is a str (checked)
    return wrap_keys(data, impl, where)
