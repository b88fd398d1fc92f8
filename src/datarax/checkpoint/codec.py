"""Pytrees of ``Metadata`` -> a JSON document, a binary blob and Orbax-saved arrays, no I/O.

Each ``Metadata`` node of the item becomes an entry of the document: its path in the item,
its ``source_info`` (see :mod:`datarax.checkpoint.source_info`) and, per dynamic field, how
it was held and its value:

- ``null``: the field is ``None``;
- ``{"int": 3}``: a Python ``int``;
- ``{"array": A}``: an array, where ``A`` records its container (``numpy``,
  ``numpy_scalar`` or ``jax``), dtype, shape and data;
- ``{"key": {"typed": bool, "impl": str | null, "data": A}}``: an RNG key, typed (with its
  impl, e.g. ``threefry2x32`` or ``rbg``) or raw.

The data of arrays on a single device (host arrays) goes into the document as base64
(``"data"``) when the item's host arrays are small (at most :data:`BLOB_THRESHOLD` bytes),
else into the process's binary file, ``process_<i>.bin`` (``"blob": [offset, nbytes]``).
An integer array that is an arithmetic progression (a constant, an ``arange``: most
counters of a batch) is ``"fill": [start, step]`` instead (see
:func:`~datarax.checkpoint.arrays.find_progression`).
A ``jax.Array`` spread over several devices of this process is a host array whose entry
also gives its sharding (``"sharding"``, see :mod:`datarax.checkpoint.shardings`). One
spread over several processes (or with a sharding that cannot be written down) is instead
named in the document (``"global": name``) and saved by Orbax's array serialization, so
that it is written from every process and can be restored with another sharding.

Encoding has two steps. :func:`encode_item` checks the item and copies what can change
(NumPy arrays, ``source_info``), keeping references to immutable JAX arrays: the handler
runs it at its ``async_save`` entry, the moment of ``CheckpointManager.save``.
:meth:`EncodedItem.finish` then fetches the arrays and lays out the bytes, in the commit
future, off the caller's thread.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from datarax.checkpoint.arrays import (
    check_dtype,
    encode_array,
    find_progression,
    little_endian,
)
from datarax.checkpoint.blob_digest import start_digest
from datarax.checkpoint.decoding import (
    _NO_TARGET,
    decode_item,
    describe_item,
    global_requests,
)
from datarax.checkpoint.documents import process_header
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.metadata_schema import FIELDS, KIND
from datarax.checkpoint.shardings import describe as describe_sharding
from datarax.checkpoint.source_info import MAX_NESTING, check_int, encode_source_info
from datarax.checkpoint.structure import encode_structure
from datarax.core._rng import is_key
from datarax.core.metadata import Metadata, MetadataManager, RecordMetadata

__all__ = [
    "BLOB_THRESHOLD", "FIELDS", "KIND", "_NO_TARGET", "EncodedItem", "decode_item",
    "describe_item", "encode_item", "global_requests", "is_global",
]  # fmt: skip

# Up to 64k keys, one jitted dispatch (an eager key_data costs an abstract evaluation per
# call, ~3x more); beyond, the eager call, which returns the keys' data without a copy.
_key_data = jax.jit(jax.random.key_data)
_JIT_KEYS = 1 << 16

BLOB_THRESHOLD = 64 * 1024
"""Host arrays of more bytes than this (in all, per process) go to ``process_<i>.bin``."""
_ALIGN = 64


def is_global(x: Any) -> bool:
    """Whether ``x`` is a ``jax.Array`` spread over more than one device or process."""
    return isinstance(x, jax.Array) and (
        not x.is_fully_addressable or len(x.sharding.device_set) > 1
    )


@dataclasses.dataclass
class EncodedItem:
    """What :func:`encode_item` returns.

    Attributes:
        doc: The document, its host arrays still to lay out (see :meth:`finish`).
        host_arrays: ``(array entry, value, where)`` per host array: a NumPy copy, or a
            JAX array or typed key (immutable) whose data is fetched by :meth:`finish`.
        global_arrays: Arrays spread over several processes, for Orbax to save, by the
            name the document gives them; typed keys are given as their key data.
    """

    doc: dict[str, Any]
    host_arrays: list[tuple[dict[str, Any], Any, str]]
    global_arrays: dict[str, jax.Array]

    def finish(
        self, threshold: int = BLOB_THRESHOLD, *, digest: bool = True
    ) -> tuple[dict[str, Any], list[Any]]:
        """Fetches the host arrays and lays them out: ``(document, blob parts)``.

        The parts (NumPy arrays and padding, to write back to back) are empty when the
        arrays went into the document as base64; otherwise the document's ``blob`` entry
        gives their total size and sha256 (with ``digest=False``, only their size: the
        caller adds :func:`~datarax.checkpoint.blob_digest.start_digest` of the parts,
        computed while it writes them). Call
        it once.
        """
        hosts = []
        for entry, value, where in self.host_arrays:
            if is_key(value):
                value = _key_data(value) if value.size <= _JIT_KEYS else jax.random.key_data(value)
            array = value if _native(value) else little_endian(value)
            fill = find_progression(array)
            if fill is None:
                hosts.append((entry, array, where))
            else:
                entry.update(dtype=_name(array.dtype), shape=list(array.shape), fill=fill)
        parts: list[memoryview | bytes] = []
        if not hosts or sum(a.nbytes for _, a, _ in hosts) <= threshold:
            for entry, array, where in hosts:
                entry.update(encode_array(array, where))
            return self.doc, parts
        offset = 0
        for entry, array, _ in hosts:
            entry.update(dtype=_name(array.dtype), shape=list(array.shape))
            entry["blob"] = [offset, array.nbytes]
            pad = -array.nbytes % _ALIGN
            for part in (array.reshape(-1).view(np.uint8).data, bytes(pad)):
                if len(part):
                    parts.append(part)
            offset += array.nbytes + pad
        self.doc["blob"] = start_digest(parts, offset).result() if digest else {"size": offset}
        return self.doc, parts


_NAMES: dict[np.dtype, str] = {}


def _name(dtype: np.dtype) -> str:
    """``dtype.name``, remembered (numpy computes it in Python, at each call)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = dtype.name
    return name


def _native(value: Any) -> bool:
    """Whether ``value`` is already what ``little_endian`` returns: a C-ordered NumPy array
    of little-endian (native) byte order."""
    return (
        type(value) is np.ndarray and _LITTLE and value.dtype.isnative and value.flags.c_contiguous
    )


_LITTLE = sys.byteorder == "little"


def encode_item(item: Any, *, copy: bool = True) -> EncodedItem:
    """Checks a pytree of :class:`~datarax.core.metadata.Metadata` and takes its values now.

    Args:
        item: One ``Metadata``, or dicts, lists and tuples (or any pytree) of them.
        copy: Copy NumPy arrays (``False``: only check, the result is not kept).

    Returns:
        The document (to :meth:`~EncodedItem.finish`) and the arrays to save through Orbax.

    Raises:
        MetadataCheckpointError: A leaf that is not a ``Metadata``, a field or
            ``source_info`` value that cannot be saved exactly (the message names its path).

    Examples:
        >>> from datarax.core.metadata import Metadata, RecordMetadata
        >>> from datarax.checkpoint.codec import decode_item, encode_item
        >>> item = {"train": [Metadata(index=3, key="a", source_info={"shape": (2, 2)})]}
        >>> doc, blob = encode_item(item).finish()
        >>> doc["nodes"][0]["path"], doc["nodes"][0]["fields"]["index"], blob
        ("['train'][0]", {'int': 3}, [])
        >>> decode_item(doc, "example") == item
        True
    """
    _check_depth(item)
    try:
        leaves, _ = tree_flatten_with_path(item, is_leaf=_is_node)
    except (TypeError, ValueError, RecursionError) as e:
        raise MetadataCheckpointError(
            f"Cannot save item: it is not a valid pytree ({str(e)[:200]}). Nothing was written."
        ) from e
    paths = _paths(leaves)
    nodes = []
    encoded = EncodedItem({}, [], {})
    for i, ((_, leaf), path) in enumerate(zip(leaves, paths, strict=True)):
        where = "item" + path
        if not isinstance(leaf, Metadata):
            raise MetadataCheckpointError(
                f"Cannot save {where}: MetadataSave saves pytrees whose leaves are Metadata, "
                f"found {type(leaf).__name__}.{_hint(leaf)} Nothing was written."
            )
        fields = {}
        for name in FIELDS:
            fields[name] = _encode_field(
                leaf.__dict__[name], f"{where}.{name}", name, encoded, f"n{i}_{name}", copy
            )
        nodes.append(
            {
                "path": path,
                "fields": fields,
                "source_info": encode_source_info(leaf.source_info, f"{where}.source_info"),
            }
        )
    structure, note = encode_structure(item)
    encoded.doc = {**process_header(KIND), "nodes": nodes, "structure": structure}
    if note is not None:
        encoded.doc["structure_note"] = note
    return encoded


def _paths(leaves: list[tuple[Any, Any]]) -> list[str]:
    try:
        return [keystr(path) for path, _ in leaves]
    except ValueError as e:  # str() of an int key beyond Python's digit limit
        raise MetadataCheckpointError(
            f"Cannot save item: one of its dict keys is an int of more than "
            f"{sys.get_int_max_str_digits()} digits, which JSON cannot write. Nothing was "
            "written."
        ) from e


def _is_node(x: Any) -> bool:
    # A RecordMetadata or a MetadataManager: to refuse whole, naming what to use instead.
    return isinstance(x, Metadata | RecordMetadata | MetadataManager)


def _hint(leaf: Any) -> str:
    if isinstance(leaf, MetadataManager):
        return " Save a MetadataManager with MetadataManagerSave(manager)."
    if not isinstance(leaf, RecordMetadata):
        return ""
    return (
        " Convert what MetadataManager.create_metadata or create_batch_metadata returns in "
        "one call: MetadataSave(record_to_metadata(record)), with "
        "`from datarax.checkpoint.records import record_to_metadata`."
    )


def _check_depth(item: Any) -> None:
    """Refuses containers nested deeper than :data:`MAX_NESTING` before JAX walks them (its
    flatten fails badly on very deep trees)."""
    pending = [(item, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, list | tuple | dict):
            if depth >= MAX_NESTING:
                raise MetadataCheckpointError(
                    f"Cannot save item: the item's containers are nested more than "
                    f"{MAX_NESTING} levels deep (MAX_NESTING). Nothing was written."
                )
            values = node.values() if isinstance(node, dict) else node
            pending.extend((value, depth + 1) for value in values)


def _encode_field(
    value: Any, where: str, name: str, encoded: EncodedItem, gname: str, copy: bool
) -> Any:
    if value is None:
        return None
    if type(value) is int:
        return {"int": check_int(value, where)}
    if isinstance(value, np.generic):
        check_dtype(value.dtype, where)
        out: dict[str, Any] = {"container": "numpy_scalar"}
        encoded.host_arrays.append((out, np.asarray(value), where))
        return {"array": out}
    if isinstance(value, np.ndarray):
        check_dtype(value.dtype, where)
        out = {"container": "numpy"}
        encoded.host_arrays.append((out, np.array(value, order="C") if copy else value, where))
        return (
            {"key": {"typed": False, "impl": None, "data": out}}
            if name == "rng_key"
            else {"array": out}
        )
    if isinstance(value, jax.core.Tracer) or not isinstance(value, jax.Array):
        raise MetadataCheckpointError(
            f"Cannot save {where}: expected an int, a NumPy or a concrete JAX array, found "
            f"{type(value).__name__}. Save outside JAX transformations. Nothing was written."
        )
    typed = is_key(value)
    spread = is_global(value)
    sharding = describe_sharding(value) if spread else None
    if spread and sharding is None:  # on several processes: through Orbax
        data = jax.random.key_data(value) if typed else value
        encoded.global_arrays[gname] = data
        out = {"container": "jax", "global": gname, "dtype": data.dtype.name}
        out["shape"] = list(data.shape)
    else:
        if not typed:
            check_dtype(value.dtype, where)
        out = {"container": "jax"}
        if sharding is not None:  # held whole by this process: fetched from its shards
            out["sharding"] = sharding
        encoded.host_arrays.append((out, value, where))  # immutable: fetched by finish()
    if typed:
        return {"key": {"typed": True, "impl": str(jax.random.key_impl(value)), "data": out}}
    if name == "rng_key":
        return {"key": {"typed": False, "impl": None, "data": out}}
    return {"array": out}
