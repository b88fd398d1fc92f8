"""``RecordMetadata``: the metadata a :class:`MetadataManager` attaches to each record."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.tree_util import GetAttrKey

from datarax.core._checks import check_counter, check_source_info, tree_equal
from datarax.core._keys import decode_key, encode_key_bytes, encode_key_rows
from datarax.core._rng import check_rng_key, split_rng
from datarax.core._static import StaticInfo

_LEAF_FIELDS = ("index", "record_key", "rng_key", "epoch", "global_step", "batch_idx", "shard_id")


PENDING = object()
"""Marks a record whose ``rng_key`` has not been derived yet."""


class _LazyRngKey:
    """Data descriptor for ``RecordMetadata.rng_key``.

    The instance holds either the key or :data:`PENDING`, with a ``(KeyStream, count)``
    reference under ``_rng_source`` from which the key is derived, bit-identically, on
    first read (see ``datarax.core._keystream``).
    """

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return None  # the dataclass default
        d = obj.__dict__
        value = d["rng_key"]
        if value is PENDING:
            stream, count = d["_rng_source"]
            value = d["rng_key"] = stream.get(count)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["rng_key"] = value


@dataclasses.dataclass(frozen=True, eq=False)
class RecordMetadata:
    """Metadata for a record in the data pipeline.

    This dataclass tracks metadata about data records as they flow through the pipeline.
    It is a JAX pytree, usable with ``jax.tree_util`` and as an argument or result of
    ``jax.jit``.

    Leaves, in order: ``index, record_key, rng_key, epoch, global_step, batch_idx,
    shard_id`` (``None`` contributes no leaf), because these change from record to record
    and must be traced, not baked into the compiled function. A ``str`` record key becomes
    a ``uint8`` leaf of shape ``(128,)`` (its UTF-8 bytes, zero-padded) so that records
    with different keys share one compilation; it is decoded back to ``str`` when the tree
    is rebuilt from concrete leaves. Any other record key (an int, a tuple of ints, an
    array) is a sub-pytree of its own. ``source_info`` is static aux data: records with
    equal ``source_info`` share one compilation.

    Attributes:
        index: Monotonically increasing index for checkpointing.
        record_key: Reference to the actual record (file index, offset, etc.).
        rng_key: JAX random key for stateless random operations.
        epoch: Current epoch number.
        global_step: Global step across all epochs.
        batch_idx: Optional batch index within the current epoch.
        shard_id: Optional shard identifier for distributed processing.
        source_info: Optional dictionary for source-specific metadata.

    Examples:
        >>> import jax
        >>> from datarax.core.metadata import RecordMetadata
        >>> r = RecordMetadata(index=0, record_key="img/7", rng_key=jax.random.key(0))
        >>> jax.jit(lambda r: r)(r).record_key
        'img/7'
        >>> len(r.split_rng(3))
        3
    """

    index: int | jax.Array
    record_key: Any
    rng_key: jax.Array | None = None
    epoch: int | jax.Array = 0
    global_step: int | jax.Array = 0
    batch_idx: int | jax.Array | None = None
    shard_id: int | jax.Array | None = None
    source_info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("index", "epoch", "global_step"):
            check_counter(name, getattr(self, name))
        for name in ("batch_idx", "shard_id"):
            check_counter(name, getattr(self, name), optional=True)
        check_rng_key(self.rng_key)
        check_source_info(self.source_info)
        if isinstance(self.record_key, str):
            encode_key_bytes(self.record_key)  # raises for keys that cannot be leaves

    def split_rng(self, num: int = 2) -> list[jax.Array | None]:
        """Splits ``rng_key`` into ``num`` keys.

        Args:
            num: How many keys, ``>= 0``.

        Returns:
            ``list(jax.random.split(rng_key, num))``, or ``[None] * num`` without a key.
        """
        return split_rng(self.rng_key, num)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return tree_equal(self, other)

    # Unhashable (it holds arrays); typeshed types object.__hash__ as a method, not None.
    __hash__ = None  # type: ignore[assignment]  # None marks it unhashable, see above

    def __getstate__(self) -> dict[str, Any]:
        # copy.copy / copy.deepcopy: carry the derived key, not the pending reference.
        state = dict(self.__dict__)
        state["rng_key"] = self.rng_key
        state.pop("_rng_source", None)
        return state


# Installed after the dataclass is built, so that its signature shows the default ``None``;
# __init__ still stores rng_key through the descriptor.
RecordMetadata.rng_key = _LazyRngKey()  # type: ignore[assignment]  # a descriptor for the field


def _key_leaf(record_key: Any, tag: str | None) -> tuple[str | None, Any]:
    """The leaf form of a record key and the tag that says how to turn it back.

    ``tag`` is set when the key is still encoded: a record rebuilt from traced leaves.
    """
    if tag is not None:
        return tag, record_key
    if isinstance(record_key, str):
        return "str", encode_key_bytes(record_key)
    if isinstance(record_key, np.ndarray) and record_key.dtype.kind == "U":
        return "str_array", encode_key_rows(record_key)
    return None, record_key


def _key_from_leaf(tag: str | None, leaf: Any) -> tuple[Any, str | None]:
    """The record key rebuilt from its leaf, and the tag if it stays encoded."""
    if tag is None:
        return leaf, None
    if not isinstance(leaf, jax.Array | np.ndarray) or isinstance(leaf, jax.core.Tracer):
        return leaf, tag
    return decode_key(leaf), None


def _flatten_with_keys(r: RecordMetadata) -> tuple[tuple[tuple[Any, Any], ...], Any]:
    children, aux = _flatten(r)
    return tuple(zip(map(GetAttrKey, _LEAF_FIELDS), children, strict=True)), aux


def _flatten(r: RecordMetadata) -> tuple[tuple[Any, ...], Any]:
    d = r.__dict__
    tag, key = _key_leaf(d["record_key"], d.get("_record_key_tag"))
    children = (
        d["index"],
        key,
        r.rng_key,
        d["epoch"],
        d["global_step"],
        d["batch_idx"],
        d["shard_id"],
    )
    return children, (tag, StaticInfo(d["source_info"]))


def _unflatten(aux: Any, children: Any) -> RecordMetadata:
    tag, info = aux
    r = object.__new__(RecordMetadata)
    d = r.__dict__
    d.update(zip(_LEAF_FIELDS, children, strict=True))
    d["record_key"], encoded_tag = _key_from_leaf(tag, d["record_key"])
    if encoded_tag is not None:
        d["_record_key_tag"] = encoded_tag
    d["source_info"] = info.value
    return r


# Hand-written rather than register_dataclass: str record keys must become array leaves and
# source_info (a dict) must be wrapped to be hashable aux data.
jax.tree_util.register_pytree_with_keys(RecordMetadata, _flatten_with_keys, _unflatten, _flatten)
