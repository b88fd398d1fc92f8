"""The containers of a Metadata pytree as JSON, so that it can be rebuilt without a target.

``{"metadata": path}`` stands for a ``Metadata`` (found by its path among the saved nodes),
``{"dict": [[key, node], ...]}`` for a dict (in insertion order, keys ``str`` or ``int``),
``{"list": [...]}``, ``{"tuple": [...]}`` and ``{"none": null}`` for the others.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.tree_util import keystr

from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.source_info import MAX_NESTING, check_int, check_str, show_key
from datarax.core.metadata import Metadata


def encode_structure(node: Any, path: tuple[Any, ...] = ()) -> tuple[Any, str | None]:
    """The containers of the item as JSON, for a restore without target; ``(None, why)``
    when a container is not a dict, list, tuple or None."""
    if isinstance(node, Metadata):
        return {"metadata": keystr(path)}, None
    if node is None:
        return {"none": None}, None
    if len(path) >= MAX_NESTING:
        raise MetadataCheckpointError(
            f"Cannot save item{keystr(path)[:200]}...: the item's containers are nested more "
            f"than {MAX_NESTING} levels deep (MAX_NESTING). Nothing was written."
        )
    kind = type(node)
    if kind is dict and all(type(k) in (str, int) for k in node):
        items = []
        for k, v in node.items():
            at = f"item{keystr(path)} key {show_key(k)}"
            if type(k) is str:
                check_str(k, at)
            else:
                check_int(k, at)
            sub, note = encode_structure(v, (*path, jax.tree_util.DictKey(k)))
            if note is not None:
                return None, note
            items.append([k, sub])
        return {"dict": items}, None
    if kind in (list, tuple):
        items = []
        for i, v in enumerate(node):
            sub, note = encode_structure(v, (*path, jax.tree_util.SequenceKey(i)))
            if note is not None:
                return None, note
            items.append(sub)
        return {kind.__name__: items}, None
    return None, (
        f"item{keystr(path)} is a {kind.__name__}: only dicts (with str or int keys), lists, "
        "tuples and None are rebuilt without a target"
    )


def rebuild(node: Any, by_path: dict[str, Metadata], where: str, depth: int = 0) -> Any:
    """Inverse of :func:`encode_structure`: the containers, each saved Metadata in place.

    Raises:
        MetadataCheckpointError: ``node`` is not what :func:`encode_structure` produces.
    """
    if type(node) is not dict or len(node) != 1:
        raise MetadataCheckpointError(f"{where}: malformed structure entry {str(node)[:60]!r}.")
    ((kind, value),) = node.items()
    if depth > MAX_NESTING:
        raise MetadataCheckpointError(
            f"{where}: the item's structure is nested more than {MAX_NESTING} levels deep "
            "(MAX_NESTING); the item was not written by datarax or is damaged."
        )
    depth += 1
    try:
        if kind == "metadata":
            return by_path[value]
        if kind == "none" and value is None:
            return None
        if kind == "dict":
            out = {}
            for k, v in value:
                if type(k) not in (str, int) or k in out:
                    raise TypeError(f"bad key {str(k)[:40]!r}")
                out[k] = rebuild(v, by_path, where, depth)
            return out
        if kind == "list":
            return [rebuild(v, by_path, where, depth) for v in value]
        if kind == "tuple":
            return tuple(rebuild(v, by_path, where, depth) for v in value)
    except (KeyError, TypeError, ValueError) as e:
        raise MetadataCheckpointError(
            f"{where}: malformed {kind!r} entry in the structure ({str(e)[:80]})."
        ) from e
    raise MetadataCheckpointError(f"{where}: unknown container {kind!r} in the structure.")
