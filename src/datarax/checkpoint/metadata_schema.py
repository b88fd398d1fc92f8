"""The shape of a Metadata document, checked before anything in it is used.

A checksum only proves that a file is the one its header vouches for, not that a datarax
wrote it: a crafted document with a valid header must be refused as strictly as the
``Metadata`` constructor refuses bad arguments, naming the field, and nothing in it is
coerced (a float, bool or string where an int belongs is an error, not a conversion).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datarax.checkpoint.blob_digest import valid_entry
from datarax.checkpoint.documents import damaged
from datarax.checkpoint.shardings import check as check_sharding

KIND = "Metadata"
FIELDS = ("index", "epoch", "global_step", "batch_idx", "shard_id", "rng_key", "_encoded_key")
_COUNTERS = ("index", "epoch", "global_step", "batch_idx", "shard_id")
_REQUIRED = {"format_version", "kind", "process_index", "process_count", "nodes", "structure"}
_OPTIONAL = {"save", "blob", "structure_note"}
_CONTAINERS = ("numpy", "numpy_scalar", "jax")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_DTYPES = ("bool", *_INT_DTYPES, "float16", "float32", "float64")


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and value >= low


def check_document(doc: dict[str, Any], where: str) -> None:
    """Checks every part of a Metadata document except ``source_info`` and ``structure``
    (checked as they are decoded).

    Raises:
        MetadataCheckpointError: The first thing that is not what the encoder writes,
            naming its node and field.
    """
    keys = set(doc)
    if not _REQUIRED <= keys <= _REQUIRED | _OPTIONAL:
        raise damaged(
            where, f"the Metadata document has keys {sorted(keys)[:12]}, expected "
            f"{sorted(_REQUIRED)} (and optionally {sorted(_OPTIONAL)})"
        )  # fmt: skip
    if not (_is_int(doc["process_index"]) and _is_int(doc["process_count"], 1)):
        raise damaged(where, "process_index or process_count is not a valid int")
    blob = doc.get("blob")
    if blob is not None and not valid_entry(blob):
        raise damaged(where, "its 'blob' entry is malformed")
    nodes = doc["nodes"]
    if type(nodes) is not list:
        raise damaged(where, "'nodes' is not a list")
    for node in nodes:
        if type(node) is not dict or set(node) != {"path", "fields", "source_info"}:
            raise damaged(where, f"malformed node {_show(node)}")
        if type(node["path"]) is not str or type(node["fields"]) is not dict:
            raise damaged(where, f"malformed node {_show(node)}")
        at = f"item{node['path'][:200]}"
        if tuple(node["fields"]) != FIELDS:
            raise damaged(where, f"{at}: fields {list(node['fields'])[:10]}, expected {FIELDS}")
        for name, entry in node["fields"].items():
            why = _check_field(name, entry, blob)
            if why is not None:
                raise damaged(where, f"{at}.{name}: {why}")


def _check_field(name: str, entry: Any, blob: Any) -> str | None:
    """Why ``entry`` is not a valid saved value of field ``name``, or ``None``."""
    if entry is None:
        return None if name in ("batch_idx", "shard_id", "rng_key", "_encoded_key") else (
            "None, but this field is a required counter (an int or an integer array)"
        )  # fmt: skip
    if type(entry) is not dict or len(entry) != 1:
        return f"malformed entry {_show(entry)}"
    ((how, value),) = entry.items()
    if how == "int":
        if name not in _COUNTERS:
            return "saved as an int, but this field holds arrays"
        if not _is_int(value):
            return f"{_show(value)} is not a non-negative int (nothing is coerced)"
        return None
    if how == "array":
        if name == "rng_key":
            return "saved as a plain array, but rng_key entries are keys"
        why = _check_array(value, blob)
        if why is not None:
            return why
        if name in _COUNTERS and value["dtype"] not in _INT_DTYPES:
            return f"an array of dtype {value['dtype']}, but a counter must be an integer array"
        if name == "_encoded_key" and (value["dtype"] != "uint8" or value["shape"][-1:] != [128]):
            return f"a {value['dtype']}{value['shape']} array, expected uint8 of shape [..., 128]"
        return None
    if how == "key":
        if name != "rng_key":
            return "saved as a key, but only rng_key holds keys"
        return _check_key(value, blob)
    return f"unknown entry {how[:20]!r}"


def _check_key(key: Any, blob: Any) -> str | None:
    if type(key) is not dict or set(key) != {"typed", "impl", "data"}:
        return f"malformed key entry {_show(key)}"
    if type(key["typed"]) is not bool:
        return f"'typed' is {_show(key['typed'])}, not a bool"
    if key["typed"] and (type(key["impl"]) is not str or not key["impl"]):
        return f"a typed key must name its impl, found {_show(key['impl'])}"
    if not key["typed"] and key["impl"] is not None:
        return "a raw key has no impl"
    why = _check_array(key["data"], blob)
    if why is not None:
        return why
    if key["data"]["dtype"] != "uint32":
        return f"key data of dtype {key['data']['dtype']}, expected uint32"
    return None


def _check_array(arr: Any, blob: Any) -> str | None:
    if type(arr) is not dict:
        return f"malformed array entry {_show(arr)}"
    sources = [k for k in ("data", "blob", "global", "fill") if k in arr]
    known = {"container", "dtype", "shape", sources[0] if sources else ""}
    if len(sources) != 1 or set(arr) - {"sharding"} != known:
        return f"malformed array entry with keys {sorted(arr)[:8]}"
    if arr["container"] not in _CONTAINERS:
        return f"unknown container {_show(arr['container'])}"
    if arr["dtype"] not in _DTYPES:
        return f"unsupported dtype {_show(arr['dtype'])}"
    shape = arr["shape"]
    if type(shape) is not list or not all(_is_int(n) for n in shape) or len(shape) > 32:
        return f"malformed shape {_show(shape)}"
    if arr["container"] == "numpy_scalar" and shape:
        return "a NumPy scalar with a shape"
    if "data" in arr and type(arr["data"]) is not str:
        return "array data is not a base64 string"
    if "global" in arr and (type(arr["global"]) is not str or arr["container"] != "jax"):
        return "a global array must be a named JAX array"
    if "sharding" in arr and ("global" in arr or arr["container"] != "jax"):
        return "only a JAX array held by this process has a sharding"
    if "sharding" in arr and (why := check_sharding(arr["sharding"], shape)) is not None:
        return why
    if "fill" in arr:
        fill = arr["fill"]
        if (
            type(fill) is not list
            or len(fill) not in (2, 3)
            or not all(type(n) is int for n in fill)
        ):
            return f"malformed fill {_show(fill)}"
        if len(fill) == 3 and fill[2] < 2:
            return f"a fill repeating each value {fill[2]} times (at least 2)"
        if arr["dtype"] not in _INT_DTYPES:
            return f"a fill of dtype {arr['dtype']}, but fills are integer arrays"
    if "blob" in arr:
        span = arr["blob"]
        if type(span) is not list or len(span) != 2 or not all(_is_int(n) for n in span):
            return f"malformed blob range {_show(span)}"
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(arr["dtype"]).itemsize
        if span[1] != nbytes or blob is None or span[0] + span[1] > blob["size"]:
            return f"blob range {span} does not hold a {arr['dtype']}{shape} array in the blob"
    return None
