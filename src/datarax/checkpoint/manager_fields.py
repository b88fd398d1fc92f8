"""The checks of a manager document's fields, one field at a time, each naming the field.

:mod:`~datarax.checkpoint.manager_codec` checks the counters with these, and
:mod:`~datarax.checkpoint.manager_streams` each ``rngs`` stream where its fast path, which
checks every stream at once, finds anything out of the ordinary: what is refused, and the
message, are those of these checks.
"""

from __future__ import annotations

import math
from typing import Any

from datarax.checkpoint.errors import MetadataCheckpointError

STREAM_FIELDS = frozenset({"typed", "impl", "key_shape", "key_data", "count_shape", "count"})
"""The fields of one stream of a manager document's ``rngs``."""

MAX_DIMS = 8
"""The most dimensions of a stream's key or count."""

UINT32_END = 2**32


def bad(where: str, field: str, expected: str, value: Any) -> MetadataCheckpointError:
    """The error for a field of the document at ``where`` that is not what was expected."""
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return MetadataCheckpointError(
        f"{where}: {field} is {shown} ({type(value).__name__}), expected {expected}. The "
        "checkpoint item is damaged or was not written by datarax; restore an earlier step."
    )


def field_int(where: str, field: str, value: Any, end: int | None = None) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) in ``[0, end)``; else raises."""
    if type(value) is not int or value < 0 or (end is not None and value >= end):
        expected = "an int >= 0" if end is None else f"an int in [0, 2**{end.bit_length() - 1})"
        raise bad(where, field, expected, value)
    return value


def check_fields(where: str, field: str, value: Any, expected: frozenset[str]) -> None:
    """Raises unless ``value`` is a dict with exactly the keys ``expected``."""
    if type(value) is not dict or set(value) != expected:
        shown = sorted(value) if type(value) is dict else value
        raise bad(where, field, f"a dict with the keys {sorted(expected)}", shown)


def _shape(where: str, field: str, value: Any) -> list[int]:
    if type(value) is not list or len(value) > MAX_DIMS:
        raise bad(where, field, f"a list of at most {MAX_DIMS} ints >= 0", value)
    return [field_int(where, f"{field}[{i}]", n) for i, n in enumerate(value)]


def _uint32s(where: str, field: str, value: Any, size: int) -> list[int]:
    if type(value) is not list or len(value) != size:
        raise bad(where, field, f"a list of {size} uint32 values", value)
    return [field_int(where, f"{field}[{i}]", v, UINT32_END) for i, v in enumerate(value)]


def stream_name(name: Any) -> bool:
    """Whether ``name`` is a stream name a manager is rebuilt with: an identifier, as
    ``nnx.Rngs(name=...)`` takes it, not private."""
    return type(name) is str and name.isidentifier() and not name.startswith("_")


def check_stream(where: str, name: Any, entry: Any) -> dict[str, Any]:
    """One stream of ``rngs``, checked field by field.

    Returns:
        The stream's fields, as new lists.

    Raises:
        MetadataCheckpointError: The first field that is malformed, named.

    Examples:
        >>> from datarax.checkpoint.manager_fields import check_stream
        >>> entry = {"typed": True, "impl": "threefry2x32", "key_shape": [],
        ...          "key_data": [0, 7], "count_shape": [], "count": [3]}
        >>> check_stream("process_0.jsonl", "metadata", entry)["count"]
        [3]
        >>> check_stream("process_0.jsonl", "metadata", {**entry, "count": [-1]})
        Traceback (most recent call last):
        ...
        datarax.checkpoint.MetadataCheckpointError: process_0.jsonl: rngs['metadata'].count[0] ...
    """
    at = f"rngs[{name!r}]"
    if not stream_name(name):
        raise bad(where, "an rngs stream name", "an identifier not starting with _", name)
    check_fields(where, at, entry, STREAM_FIELDS)
    typed, impl = entry["typed"], entry["impl"]
    if type(typed) is not bool:
        raise bad(where, f"{at}.typed", "true or false", typed)
    if typed and (type(impl) is not str or not impl):
        raise bad(where, f"{at}.impl", "the name of a JAX PRNG impl for a typed key", impl)
    if not typed and impl is not None:
        raise bad(where, f"{at}.impl", "null for a raw key", impl)
    key_shape = _shape(where, f"{at}.key_shape", entry["key_shape"])
    data = entry["key_data"]
    if type(data) is not list or (not typed and len(data) != math.prod(key_shape)):
        raise bad(where, f"{at}.key_data", f"a list of uint32 values for shape {key_shape}", data)
    key_data = _uint32s(where, f"{at}.key_data", data, len(data))
    count_shape = _shape(where, f"{at}.count_shape", entry["count_shape"])
    if typed and count_shape != key_shape:  # nnx.RngStream counts each key: same shape
        raise bad(where, f"{at}.count_shape", f"the key's shape {key_shape}", count_shape)
    count = _uint32s(where, f"{at}.count", entry["count"], math.prod(count_shape))
    return {
        "typed": typed,
        "impl": impl,
        "key_shape": key_shape,
        "key_data": key_data,
        "count_shape": count_shape,
        "count": count,
    }
