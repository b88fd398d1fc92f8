"""A Metadata document (and its blob and Orbax arrays) -> the pytree it describes.

The inverse of :mod:`datarax.checkpoint.codec`. The document is checked field by field by
:func:`datarax.checkpoint.metadata_schema.check_document` first, as strictly as the
``Metadata`` constructor checks its arguments: nothing is coerced.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from datarax.checkpoint.arrays import decode_array, wrap_key
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.metadata_schema import FIELDS, KIND, check_document
from datarax.checkpoint.shardings import FILL_BLOCKS_FROM, FillBlocks
from datarax.checkpoint.shardings import rebuild as saved_sharding
from datarax.checkpoint.source_info import decode_source_info
from datarax.checkpoint.structure import rebuild
from datarax.core._rng import is_key
from datarax.core.metadata import Metadata

_NO_TARGET = object()


class _Sources(NamedTuple):
    arrays: dict[str, jax.Array]
    blob: Any


def _is_metadata(x: Any) -> bool:
    return isinstance(x, Metadata)


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
    blob: Any = None,
    *,
    checked: bool = False,
) -> Any:
    """Inverse of :func:`~datarax.checkpoint.codec.encode_item`.

    Args:
        doc: The document.
        where: The file ``doc`` came from, for error messages.
        target: Optional pytree shaped like the saved item; its containers are reused, and
            each array field comes back in the target leaf's container and sharding.
            Without it, the item is rebuilt from the document alone.
        global_values: The arrays named in :func:`global_requests`, restored by Orbax.
        blob: The bytes of the process's ``.bin`` file, when the document has a ``blob``.
        checked: ``doc`` passed :func:`check_document` already.

    Returns:
        The restored item.

    Raises:
        MetadataCheckpointError: The target does not match what was saved (the message
            names the path), or the document is malformed.
    """
    templates = _templates(doc, target)
    has_target = target is not _NO_TARGET
    if not checked:
        check_document(doc, where)
    sources = _Sources(global_values or {}, blob)
    restored = []
    for node, template in zip(doc["nodes"], templates, strict=True):
        at = f"{where}: item{node['path']}"
        fields = {
            name: _decode_field(
                node["fields"][name],
                getattr(template, name) if has_target else _NO_TARGET,
                f"{at}.{name}",
                sources,
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


def _decode_field(entry: Any, t: Any, where: str, sources: _Sources) -> Any:
    has_target = t is not _NO_TARGET
    if entry is None:
        if has_target and t is not None:
            raise _mismatch(where, "None", t)
        return None
    if has_target and t is None:
        raise _mismatch(where, _describe(entry), t)
    if "int" in entry:
        if has_target and type(t) is not int and not _abstract_int(t):
            raise _mismatch(where, _describe(entry), t)
        value = entry["int"]
        if type(value) is not int:
            raise MetadataCheckpointError(f"{where}: malformed int {value!r}.")
        return value
    if "array" in entry:
        if has_target and (type(t) is int or is_key(t) or not _array_like(t)):
            raise _mismatch(where, _describe(entry), t)
        value = _materialize(entry["array"], t, where, sources)
        if has_target and (value.dtype != t.dtype or value.shape != np.shape(t)):
            raise _mismatch(where, _describe(entry), t)
        return value
    k = entry["key"]
    if not k["typed"]:
        if has_target and (is_key(t) or not _array_like(t)):
            raise _mismatch(where, _describe(entry), t)
        return _materialize(k["data"], t, where, sources)
    if has_target and not (_array_like(t) and jnp.issubdtype(t.dtype, jax.dtypes.prng_key)):
        raise _mismatch(where, _describe(entry), t)
    if has_target and is_key(t) and str(jax.random.key_impl(t)) != k["impl"]:
        raise _mismatch(where, _describe(entry), t)
    arr = k["data"]
    if arr.keys() & {"global", "sharding", "fill"} or getattr(t, "sharding", None) is not None:
        data = _materialize(arr, t, where, sources, force_jax=True)
    else:  # one device's data: wrap_key builds the key in one jitted dispatch
        data = decode_array(arr, where, sources.blob)
    key = wrap_key(data, k["impl"], where)
    if has_target and (key.dtype != t.dtype or key.shape != t.shape):
        raise _mismatch(where, f"a typed {k['impl']} key of shape {key.shape}", t)
    return key


def _abstract_int(t: Any) -> bool:
    """Whether ``t`` is what ``jax.eval_shape`` makes of a Python int: a weakly typed
    integer ``ShapeDtypeStruct`` of shape ``()``. The saved int is restored as it was."""
    return (
        isinstance(t, jax.ShapeDtypeStruct)
        and t.shape == ()
        and t.weak_type
        and jnp.issubdtype(t.dtype, jnp.integer)
    )


def _array_like(t: Any) -> bool:
    return isinstance(t, np.ndarray | np.generic | jax.Array | jax.ShapeDtypeStruct)


def _materialize(
    arr: dict[str, Any],
    t: Any,
    where: str,
    sources: _Sources,
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
    host: Any
    if "global" in arr:
        try:
            value = sources.arrays[arr["global"]]
        except KeyError as e:
            raise MetadataCheckpointError(f"{where}: array {arr['global']!r} missing.") from e
        if container == "jax":
            return value
        host = np.asarray(value)
    elif container == "jax" and "fill" in arr and math.prod(arr["shape"]) >= FILL_BLOCKS_FROM:
        host = FillBlocks(arr, where)  # made on each device: no host array of the whole
    else:
        host = decode_array(arr, where, sources.blob)
    if container == "numpy":
        return host
    if container == "numpy_scalar":
        return host[()]
    if jax.dtypes.canonicalize_dtype(host.dtype) != host.dtype:
        raise MetadataCheckpointError(
            f"{where}: saved as a JAX array of dtype {host.dtype}, which this process cannot "
            f"hold: JAX would narrow it to {jax.dtypes.canonicalize_dtype(host.dtype)} "
            "(jax_enable_x64 is off). Enable it before restoring "
            "(jax.config.update('jax_enable_x64', True)), or restore into a NumPy target."
        )
    if sharding is None and "sharding" in arr:  # no sharding asked for: the saved one
        sharding = saved_sharding(arr["sharding"], where)
    if sharding is None:
        return jnp.asarray(np.asarray(host))
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
