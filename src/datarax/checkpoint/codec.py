"""Pytrees of ``Metadata`` <-> a JSON document plus Orbax-saved arrays, with no I/O.

Each ``Metadata`` node of the item becomes an entry of the document: its path in the item,
its ``source_info`` (see :mod:`datarax.checkpoint.source_info`) and, per dynamic field, how
it was held and its value:

- ``null``: the field is ``None``;
- ``{"int": 3}``: a Python ``int``;
- ``{"array": A}``: an array, where ``A`` records its container (``numpy``,
  ``numpy_scalar`` or ``jax``), dtype, shape and data;
- ``{"key": {"typed": bool, "impl": str | null, "data": A}}``: an RNG key, typed (with its
  impl, e.g. ``threefry2x32`` or ``rbg``) or raw.

The data of an array on a single device is copied into the document (base64). A
``jax.Array`` spread over several devices (or processes) is instead named in the document
(``"global": name``) and saved by Orbax's array serialization, so that it is written from
every device and can be restored with another sharding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from datarax.checkpoint.arrays import decode_array, encode_array, is_key, wrap_key
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.integrity import process_header
from datarax.checkpoint.source_info import decode_source_info, encode_source_info
from datarax.checkpoint.structure import encode_structure, rebuild
from datarax.core.metadata import Metadata

KIND = "Metadata"
FIELDS = ("index", "epoch", "global_step", "batch_idx", "shard_id", "rng_key", "_encoded_key")
_NO_TARGET = object()


def _is_metadata(x: Any) -> bool:
    return isinstance(x, Metadata)


def is_global(x: Any) -> bool:
    """Whether ``x`` is a ``jax.Array`` spread over more than one device or process."""
    return isinstance(x, jax.Array) and (
        not x.is_fully_addressable or len(x.sharding.device_set) > 1
    )


@dataclasses.dataclass
class EncodedItem:
    """What :func:`encode_item` returns.

    Attributes:
        doc: The JSON-ready document of this process.
        global_arrays: Arrays spread over several devices, by the name the document gives
            them; typed keys are given as their key data.
    """

    doc: dict[str, Any]
    global_arrays: dict[str, jax.Array]


def encode_item(item: Any) -> EncodedItem:
    """Encodes a pytree of :class:`~datarax.core.metadata.Metadata`, copying its values now.

    Args:
        item: One ``Metadata``, or dicts, lists and tuples (or any pytree) of them.

    Returns:
        The document and the arrays to save through Orbax.

    Raises:
        MetadataCheckpointError: A leaf that is not a ``Metadata``, a field or
            ``source_info`` value that cannot be saved exactly (the message names its path).

    Examples:
        >>> from datarax.core.metadata import Metadata
        >>> from datarax.checkpoint.codec import decode_item, encode_item
        >>> item = {"train": [Metadata(index=3, key="a", source_info={"shape": (2, 2)})]}
        >>> doc = encode_item(item).doc
        >>> doc["nodes"][0]["path"], doc["nodes"][0]["fields"]["index"]
        ("['train'][0]", {'int': 3})
        >>> decode_item(doc, "example") == item
        True
    """
    try:
        leaves, _ = tree_flatten_with_path(item, is_leaf=_is_metadata)
    except (TypeError, ValueError) as e:
        raise MetadataCheckpointError(f"Cannot save item: it is not a valid pytree ({e}).") from e
    nodes = []
    global_arrays: dict[str, jax.Array] = {}
    for i, (path, leaf) in enumerate(leaves):
        where = "item" + keystr(path)
        if not isinstance(leaf, Metadata):
            raise MetadataCheckpointError(
                f"Cannot save {where}: MetadataSave saves pytrees whose leaves are Metadata, "
                f"found {type(leaf).__name__}. Nothing was written."
            )
        fields = {}
        for name in FIELDS:
            fields[name] = _encode_field(
                leaf.__dict__[name], f"{where}.{name}", name, global_arrays, f"n{i}_{name}"
            )
        nodes.append(
            {
                "path": keystr(path),
                "fields": fields,
                "source_info": encode_source_info(leaf.source_info, f"{where}.source_info"),
            }
        )
    structure, note = encode_structure(item)
    doc = {**process_header(KIND), "nodes": nodes, "structure": structure}
    if note is not None:
        doc["structure_note"] = note
    return EncodedItem(doc, global_arrays)


def _encode_field(
    value: Any, where: str, name: str, global_arrays: dict[str, jax.Array], gname: str
) -> Any:
    if value is None:
        return None
    if type(value) is int:
        return {"int": value}
    if isinstance(value, np.generic):
        return {"array": {"container": "numpy_scalar", **encode_array(np.asarray(value), where)}}
    if isinstance(value, np.ndarray):
        out: dict[str, Any] = {"container": "numpy", **encode_array(value, where)}
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
    data = jax.random.key_data(value) if typed else value
    if is_global(value):
        global_arrays[gname] = data
        out = {"container": "jax", "global": gname, "dtype": data.dtype.name}
        out["shape"] = list(data.shape)
    else:
        out = {"container": "jax", **encode_array(np.asarray(data), where)}
    if typed:
        return {"key": {"typed": True, "impl": str(jax.random.key_impl(value)), "data": out}}
    if name == "rng_key":
        return {"key": {"typed": False, "impl": None, "data": out}}
    return {"array": out}


def global_requests(doc: dict[str, Any], target: Any = _NO_TARGET) -> dict[str, Any]:
    """The arrays to restore through Orbax: ``{name: (dtype, shape, sharding or None)}``.

    ``sharding`` is the target leaf's (``None`` without a target: Orbax then uses the saved
    sharding).
    """
    templates = _templates(doc, target)
    requests = {}
    for node, template in zip(doc["nodes"], templates, strict=True):
        for name, entry in node["fields"].items():
            if entry is None:
                continue
            arr = entry.get("array") or entry.get("key", {}).get("data")
            if arr is None or "global" not in arr:
                continue
            t = getattr(template, name, None) if template is not None else None
            sharding = (
                getattr(t, "sharding", None)
                if isinstance(t, jax.Array | jax.ShapeDtypeStruct)
                else None
            )
            requests[arr["global"]] = (np.dtype(arr["dtype"]), tuple(arr["shape"]), sharding)
    return requests


def _templates(doc: dict[str, Any], target: Any) -> list[Any]:
    """The target's Metadata nodes, aligned with the document's; ``None``s without target."""
    saved = [node["path"] for node in doc["nodes"]]
    if target is _NO_TARGET:
        return [None] * len(saved)
    leaves, _ = tree_flatten_with_path(target, is_leaf=_is_metadata)
    paths = [keystr(p) for p, _ in leaves]
    if paths != saved:
        missing = [p for p in saved if p not in paths]
        extra = [p for p in paths if p not in saved]
        raise MetadataCheckpointError(
            f"The target's structure differs from the saved item's: saved Metadata at "
            f"{saved[:8]}, the target has them at {paths[:8]} (not in the target: "
            f"{missing[:8]}; not saved: {extra[:8]}). Pass a target shaped like the saved "
            "item, or MetadataRestore() to rebuild it from the checkpoint."
        )
    for p, leaf in leaves:
        if not isinstance(leaf, Metadata):
            raise MetadataCheckpointError(
                f"target{keystr(p)}: expected a Metadata, found {type(leaf).__name__}."
            )
    return [leaf for _, leaf in leaves]


def decode_item(
    doc: dict[str, Any],
    where: str,
    target: Any = _NO_TARGET,
    global_values: dict[str, jax.Array] | None = None,
) -> Any:
    """Inverse of :func:`encode_item`.

    Args:
        doc: The document.
        where: The file ``doc`` came from, for error messages.
        target: Optional pytree shaped like the saved item; its containers are reused, and
            each array field comes back in the target leaf's container and sharding.
            Without it, the item is rebuilt from the document alone.
        global_values: The arrays named in :func:`global_requests`, restored by Orbax.

    Returns:
        The restored item.

    Raises:
        MetadataCheckpointError: The target does not match what was saved (the message
            names the path), or the document is malformed.
    """
    templates = _templates(doc, target)
    has_target = target is not _NO_TARGET
    globals_ = global_values or {}
    restored = []
    for node, template in zip(doc["nodes"], templates, strict=True):
        at = f"{where}: item{node['path']}"
        fields = {
            name: _decode_field(
                node["fields"][name],
                getattr(template, name) if has_target else _NO_TARGET,
                f"{at}.{name}",
                globals_,
            )
            for name in FIELDS
        }
        source_info = decode_source_info(node["source_info"], f"{at}.source_info")
        try:
            restored.append(Metadata(**fields, source_info=source_info))
        except (TypeError, ValueError) as e:
            raise MetadataCheckpointError(f"{at}: not a valid Metadata ({e}).") from e
    if has_target:
        _, treedef = jax.tree.flatten(target, is_leaf=_is_metadata)
        return jax.tree.unflatten(treedef, restored)
    if doc["structure"] is None:
        raise MetadataCheckpointError(
            f"{where}: {doc.get('structure_note', 'the item has custom containers')}. "
            "Pass a target shaped like the saved item: MetadataRestore(target)."
        )
    by_path = {node["path"]: m for node, m in zip(doc["nodes"], restored, strict=True)}
    return rebuild(doc["structure"], by_path, where)


def _mismatch(where: str, saved: str, found: Any) -> MetadataCheckpointError:
    if found is None:
        kind = "None"
    elif is_key(found):
        kind = f"a typed {jax.random.key_impl(found)} key of shape {found.shape}"
    elif isinstance(found, jax.ShapeDtypeStruct) and jnp.issubdtype(
        found.dtype, jax.dtypes.prng_key
    ):
        kind = f"a typed key {found.dtype} of shape {found.shape}"
    elif isinstance(found, np.ndarray | np.generic | jax.Array | jax.ShapeDtypeStruct):
        kind = f"a {type(found).__name__} {found.dtype}{list(np.shape(found))}"
    else:
        kind = f"a {type(found).__name__}"
    return MetadataCheckpointError(
        f"{where}: saved {saved}, the target has {kind}. Pass a target whose fields match the "
        "saved item, or MetadataRestore() to rebuild it from the checkpoint."
    )


def _describe(entry: Any) -> str:
    if entry is None:
        return "None"
    if "int" in entry:
        return "a Python int"
    if "array" in entry:
        a = entry["array"]
        return f"a {a['container']} array {a['dtype']}{a['shape']}"
    k = entry["key"]
    shape = k["data"]["shape"]
    return f"a typed {k['impl']} key" if k["typed"] else f"a raw key uint32{shape}"


def _decode_field(entry: Any, t: Any, where: str, globals_: dict[str, jax.Array]) -> Any:
    has_target = t is not _NO_TARGET
    if entry is None:
        if has_target and t is not None:
            raise _mismatch(where, "None", t)
        return None
    if has_target and t is None:
        raise _mismatch(where, _describe(entry), t)
    if "int" in entry:
        if has_target and type(t) is not int:
            raise _mismatch(where, _describe(entry), t)
        value = entry["int"]
        if type(value) is not int:
            raise MetadataCheckpointError(f"{where}: malformed int {value!r}.")
        return value
    if "array" in entry:
        if has_target and (type(t) is int or is_key(t) or not _array_like(t)):
            raise _mismatch(where, _describe(entry), t)
        value = _materialize(entry["array"], t, where, globals_)
        if has_target and (value.dtype != t.dtype or value.shape != np.shape(t)):
            raise _mismatch(where, _describe(entry), t)
        return value
    k = entry["key"]
    if not k["typed"]:
        if has_target and (is_key(t) or not _array_like(t)):
            raise _mismatch(where, _describe(entry), t)
        return _materialize(k["data"], t, where, globals_)
    if has_target and not (_array_like(t) and jnp.issubdtype(t.dtype, jax.dtypes.prng_key)):
        raise _mismatch(where, _describe(entry), t)
    if has_target and is_key(t) and str(jax.random.key_impl(t)) != k["impl"]:
        raise _mismatch(where, _describe(entry), t)
    data = _materialize(k["data"], t, where, globals_, force_jax=True)
    key = wrap_key(data, k["impl"], where)
    if has_target and (key.dtype != t.dtype or key.shape != t.shape):
        raise _mismatch(where, f"a typed {k['impl']} key of shape {key.shape}", t)
    return key


def _array_like(t: Any) -> bool:
    return isinstance(t, np.ndarray | np.generic | jax.Array | jax.ShapeDtypeStruct)


def _materialize(
    arr: dict[str, Any],
    t: Any,
    where: str,
    globals_: dict[str, jax.Array],
    *,
    force_jax: bool = False,
) -> Any:
    """The array described by ``arr``, in the target leaf's container and sharding (or the
    saved container without target)."""
    if t is _NO_TARGET:
        container, sharding = arr["container"], None
    elif isinstance(t, np.generic):
        container, sharding = "numpy_scalar", None
    elif isinstance(t, np.ndarray):
        container, sharding = "numpy", None
    else:
        container, sharding = "jax", getattr(t, "sharding", None)
    if force_jax:
        container = "jax"
    if "global" in arr:
        try:
            value = globals_[arr["global"]]
        except KeyError as e:
            raise MetadataCheckpointError(f"{where}: array {arr['global']!r} missing.") from e
        if container == "jax":
            return value
        host = np.asarray(value)
    else:
        host = decode_array(arr, where)
    if container == "numpy":
        return host
    if container == "numpy_scalar":
        return host[()]
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def describe_item(doc: dict[str, Any]) -> dict[str, Any]:
    """What ``handler.metadata(directory)`` returns for a Metadata item."""
    return {
        "format_version": doc["format_version"],
        "kind": KIND,
        "process_count": doc["process_count"],
        "restorable_without_target": doc["structure"] is not None,
        "nodes": {
            node["path"]: {name: _describe(entry) for name, entry in node["fields"].items()}
            for node in doc["nodes"]
        },
    }
