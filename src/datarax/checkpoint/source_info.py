"""Exact JSON encoding of ``source_info``: what is saved comes back equal and of the same types.

JSON alone would turn a tuple into a list and an ``int`` dict key into a ``str``. Those two are
tagged, so they come back as they were:

- a tuple is ``{"$tuple": [...]}``;
- a dict whose keys are not all strings, or that has a key starting with ``$``, is
  ``{"$dict": [[key, value], ...]}`` (its keys encoded like any other value).

Any other JSON object is a plain ``dict`` with ``str`` keys. ``None``, ``bool``, ``int``,
finite ``float``, ``str`` and ``list`` are JSON's own. Everything else (sets, bytes, NaN and
infinities, NumPy scalars, subclasses of the built-in types, arbitrary objects) is refused
at save time, before anything is written, with the path of the offending value, and so
are the values JSON cannot carry exactly: an ``int`` of more digits than
``sys.get_int_max_str_digits()``, a ``str`` holding a surrogate pair as two code points
(JSON reads it back as one character), and nesting deeper than :data:`MAX_NESTING`.
"""

from __future__ import annotations

import math
import re
import sys
from itertools import repeat
from typing import Any

from datarax.checkpoint.errors import MetadataCheckpointError

MAX_NESTING = 100
"""The deepest nesting of lists, tuples and dicts a ``source_info`` may have (saved or
restored): deeper is refused with a clear error, never a ``RecursionError``."""

_TUPLE = "$tuple"
# A high surrogate followed by a low one: JSON would read the pair back as one character.
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_DICT = "$dict"
_NONE = type(None)

_HINTS: dict[type, str] = {
    set: "use a sorted list or a tuple",
    frozenset: "use a sorted list or a tuple",
    bytes: "decode it to a str (or base64-encode it)",
    bytearray: "decode it to a str (or base64-encode it)",
}


def _refuse(path: str, value: Any, why: str, hint: str | None = None) -> MetadataCheckpointError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return MetadataCheckpointError(
        f"Cannot save {path}: it is {why} ({shown}), which would not come back equal and of "
        f"the same type{'; ' + hint if hint else ''}. source_info may hold None, bool, int, "
        "finite float, str, and lists, tuples and dicts of them. Nothing was written."
    )


def encode_source_info(value: Any, path: str = "source_info") -> Any:
    """Encodes ``value`` as JSON-ready data that :func:`decode_source_info` turns back into an
    equal value of the same types.

    Args:
        value: The ``source_info`` to encode (usually a dict, or ``None``).
        path: How to name ``value`` in error messages.

    Returns:
        Nested ``dict``/``list``/scalars that ``json.dumps(..., allow_nan=False)`` accepts.

    Raises:
        MetadataCheckpointError: ``value`` holds something that cannot round-trip exactly;
            the message names its path, e.g. ``source_info['files'][3]``.

    Examples:
        >>> from datarax.checkpoint.source_info import decode_source_info, encode_source_info
        >>> encode_source_info({"shape": (2, 3), 7: "x"})
        {'$dict': [['shape', {'$tuple': [2, 3]}], [7, 'x']]}
        >>> decode_source_info(encode_source_info({"shape": (2, 3), 7: "x"}))
        {'shape': (2, 3), 7: 'x'}
        >>> encode_source_info({"files": ["a", "b", "c", {1, 2}]})
        Traceback (most recent call last):
        ...
        datarax.checkpoint.MetadataCheckpointError: Cannot save source_info['files'][3]: \
it is a set ({1, 2}), which would not come back equal and of the same type; use a sorted list \
or a tuple. source_info may hold None, bool, int, finite float, str, and lists, tuples and \
dicts of them. Nothing was written.
    """
    return _encode(value, path, set())


def check_int(value: int, path: str) -> int:
    """Returns ``value`` if JSON can write it (``str(value)`` within Python's digit limit).

    Raises:
        MetadataCheckpointError: An int of more than ``sys.get_int_max_str_digits()`` digits.
    """
    limit = sys.get_int_max_str_digits()
    if limit and abs(value).bit_length() > 3 * limit and abs(value) >= 10**limit:
        raise MetadataCheckpointError(
            f"Cannot save {path}: an int of more than {limit} digits, which JSON cannot "
            "write (sys.get_int_max_str_digits()). Nothing was written."
        )
    return value


def check_str(value: str, path: str) -> str:
    """Returns ``value`` unless it holds a surrogate pair as two code points.

    Raises:
        MetadataCheckpointError: ``value`` would come back as other text.
    """
    if not value.isascii() and _PAIR.search(value):
        raise _refuse(
            path, value, "a str holding a surrogate pair as two code points (JSON reads it "
            "back as one character)", "combine the pair into one character",
        )  # fmt: skip
    return value


def _encode(value: Any, path: str, active: set[int]) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is int:
        return check_int(value, path)
    if kind is str:
        return check_str(value, path)
    if kind is float:
        if not math.isfinite(value):
            raise _refuse(path, value, "a non-finite float (JSON has no NaN or infinity)")
        return value
    if kind in (list, tuple, dict):
        if id(value) in active:
            raise _refuse(path, value, f"a {kind.__name__} that contains itself")
        if len(active) >= MAX_NESTING:
            raise _too_deep(path)
        if _flat(value.values() if kind is dict else value) and (
            kind is not dict or _plain_keys(value)
        ):
            return {_TUPLE: list(value)} if kind is tuple else kind(value)
        active.add(id(value))
        try:
            if kind is list:
                return [_encode(v, f"{path}[{i}]", active) for i, v in enumerate(value)]
            if kind is tuple:
                return {_TUPLE: [_encode(v, f"{path}[{i}]", active) for i, v in enumerate(value)]}
            return _encode_dict(value, path, active)
        finally:
            active.discard(id(value))
    hint = _HINTS.get(kind)
    if hint is None and kind.__module__ == "numpy":
        hint = "convert it with int(), float() or .tolist()"
    elif hint is None and isinstance(value, bool | int | float | str | list | tuple | dict):
        hint = f"use a plain {kind.__mro__[1].__name__}"
    raise _refuse(path, value, f"a {kind.__name__}", hint)


def _flat(values: Any) -> bool:
    """Whether ``values`` are all scalars of one type that JSON carries exactly, checked at C
    speed (a large ``source_info``). ``False`` sends them to the element-wise path, which
    also reports what is wrong."""
    types = set(map(type, values))
    if len(types) != 1:
        return not types
    (kind,) = types
    if kind is str:
        return _plain_strs(values)
    if kind is int:
        return all(map(_small_int, (min(values), max(values))))
    if kind is float:
        return all(map(math.isfinite, values))
    return kind is bool or kind is _NONE


def _plain_strs(strs: Any) -> bool:
    """No str of ``strs`` holds a surrogate pair (as :func:`check_str` checks), at C speed.
    A pair cannot straddle two strings joined by ``"\\x00"``."""
    joined = "\x00".join(strs)
    return joined.isascii() or _PAIR.search(joined) is None


def _plain_keys(value: dict[Any, Any]) -> bool:
    """The dict's keys are strs, none starts with ``$`` nor holds a surrogate pair."""
    if set(map(type, value)) - {str}:
        return False
    return not _dollar_key(value) and _plain_strs(value)


def _dollar_key(keys: Any) -> bool:
    """Whether a str of ``keys`` starts with ``$``: key by key only where one of them holds
    a ``$`` at all (one search of the joined keys otherwise)."""
    return "$" in "".join(keys) and any(map(str.startswith, keys, repeat("$")))


def _small_int(value: int) -> bool:
    limit = sys.get_int_max_str_digits()
    return not limit or abs(value).bit_length() <= 3 * limit


def show_key(key: Any) -> str:
    """``repr(key)``, or a description where ``repr`` would fail (an int too long to print).

    Examples:
        >>> from datarax.checkpoint.source_info import show_key
        >>> show_key("a"), show_key(10**5000)
        ("'a'", '<an int of 16610 bits>')
    """
    try:
        return repr(key)
    except ValueError:
        return f"<an int of {key.bit_length()} bits>"


def _encode_dict(value: dict[Any, Any], path: str, active: set[int]) -> Any:
    if all(type(k) is str and not k.startswith("$") for k in value):
        return {
            check_str(k, f"{path} key {k!r}"): _encode(v, f"{path}[{k!r}]", active)
            for k, v in value.items()
        }
    pairs = []
    for k, v in value.items():
        shown = show_key(k)
        pairs.append(
            [_encode(k, f"{path} key {shown}", active), _encode(v, f"{path}[{shown}]", active)]
        )
    return {_DICT: pairs}


def _too_deep(path: str) -> MetadataCheckpointError:
    return MetadataCheckpointError(
        f"Cannot save {path}: source_info is nested more than {MAX_NESTING} levels deep "
        "(MAX_NESTING). Nothing was written."
    )


def decode_source_info(data: Any, where: str = "source_info", depth: int = 0) -> Any:
    """Inverse of :func:`encode_source_info`.

    Args:
        data: Parsed JSON produced by :func:`encode_source_info`.
        where: How to name ``data`` in error messages (a file and a path).

    Returns:
        The original value, with its tuples, ``int`` keys and types.

    Raises:
        MetadataCheckpointError: ``data`` is not something :func:`encode_source_info`
            produces.
    """
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if depth >= MAX_NESTING:
        raise MetadataCheckpointError(
            f"{where}: nested more than {MAX_NESTING} levels deep (MAX_NESTING); the item was "
            "not written by datarax or is damaged."
        )
    depth += 1
    if kind is list and _decoded(data):
        return list(data)
    if kind is list:
        return [decode_source_info(v, f"{where}[{i}]", depth) for i, v in enumerate(data)]
    if kind is dict:
        if len(data) == 1 and _TUPLE in data and type(data[_TUPLE]) is list:
            items = data[_TUPLE]
            if _decoded(items):
                return tuple(items)
            return tuple(decode_source_info(v, f"{where}[{i}]", depth) for i, v in enumerate(items))
        if len(data) == 1 and _DICT in data and type(data[_DICT]) is list:
            out: dict[Any, Any] = {}
            for pair in data[_DICT]:
                if type(pair) is not list or len(pair) != 2:
                    raise _malformed(where, pair)
                key = decode_source_info(pair[0], f"{where} key", depth)
                try:
                    out[key] = decode_source_info(pair[1], f"{where}[{key!r}]", depth)
                except TypeError as e:  # an unhashable key: not produced by the encoder
                    raise _malformed(where, pair) from e
            return out
        if _dollar_key(data):
            raise _malformed(where, data)
        if _decoded(data.values()):
            return dict(data)
        return {k: decode_source_info(v, f"{where}[{k!r}]", depth) for k, v in data.items()}
    raise _malformed(where, data)


def _decoded(values: Any) -> bool:
    """Whether ``values`` are all JSON scalars, which decode to themselves (at C speed)."""
    return set(map(type, values)) <= _SCALARS


_SCALARS = {str, int, float, bool, _NONE}


def _malformed(where: str, data: Any) -> MetadataCheckpointError:
    return MetadataCheckpointError(
        f"{where}: {str(data)[:60]!r} is not an encoded source_info value; the item was not "
        "written by this version of datarax or is damaged."
    )
