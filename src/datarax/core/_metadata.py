"""``Metadata``: the experiment-state pytree of the seed API."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import GetAttrKey

from datarax.core._checks import check_counter, check_source_info, tree_equal
from datarax.core._keys import MAX_KEY_LENGTH, check_encoded, decode_key, encode_key
from datarax.core._rng import check_rng_key, split_rng
from datarax.core._static import StaticInfo

_LEAF_FIELDS = ("index", "epoch", "global_step", "batch_idx", "shard_id", "rng_key", "_encoded_key")
_COUNTERS = ("index", "epoch", "global_step")
_OPTIONAL_COUNTERS = ("batch_idx", "shard_id")


@dataclasses.dataclass(frozen=True, eq=False)
class Metadata:
    """Metadata for tracking experiment state.

    A frozen dataclass registered as a JAX pytree. Its dynamic fields are leaves, traced
    under ``jax.jit``, in this order: ``index, epoch, global_step, batch_idx, shard_id,
    rng_key, _encoded_key`` (a field that is ``None`` contributes no leaf). ``source_info``
    is static aux data, so changing only counters, keys or the record key never recompiles.

    Counters keep the type they were given: a Python ``int`` stays a Python ``int`` and an
    array stays an array. Every method returns a new instance; the original never changes.

    Attributes:
        index: Position of the record in the stream (``int`` or integer array).
        epoch: Current epoch number.
        global_step: Global step across all epochs.
        batch_idx: Optional batch index within the current epoch.
        shard_id: Optional shard identifier for distributed processing.
        rng_key: Optional JAX random key (typed or raw) for stateless random operations.
        _encoded_key: The record key as a ``uint8`` array of shape ``(128,)``: its UTF-8
            bytes, zero-padded (``(..., 128)`` for a batch of keys, one row per key). Set
            it through ``key=``; read it back with :attr:`entry_key`.
        source_info: Optional dictionary of source-specific metadata (static).
        key (str | numpy.ndarray | None): Init-only record key text, at most 128 UTF-8
            bytes, stored as ``_encoded_key``; or a NumPy array of such texts (a batch),
            stored as one row per key.

    Examples:
        >>> import jax
        >>> from datarax.core.metadata import Metadata
        >>> m = Metadata(index=3, epoch=1, key="train/00042")
        >>> m.entry_key
        'train/00042'
        >>> [type(leaf).__name__ for leaf in jax.tree.leaves(m)][:3]
        ['int', 'int', 'int']
        >>> m.increment_epoch().to_dict()["batch_idx"]
        0
    """

    index: int | jax.Array = 0
    epoch: int | jax.Array = 0
    global_step: int | jax.Array = 0
    batch_idx: int | jax.Array | None = None
    shard_id: int | jax.Array | None = None
    rng_key: jax.Array | None = None
    _encoded_key: jax.Array | np.ndarray | None = None
    source_info: dict[str, Any] | None = None
    key: dataclasses.InitVar[str | np.ndarray | None] = None

    def __post_init__(self, key: str | np.ndarray | None) -> None:
        for name in _COUNTERS:
            check_counter(name, getattr(self, name))
        for name in _OPTIONAL_COUNTERS:
            check_counter(name, getattr(self, name), optional=True)
        check_rng_key(self.rng_key)
        check_source_info(self.source_info)
        if key is not None:
            if self._encoded_key is not None:
                raise ValueError(
                    "Pass the record key either as key= or as _encoded_key=, not both."
                )
            object.__setattr__(self, "_encoded_key", encode_key(key))
        elif self._encoded_key is not None:
            _check_encoded_key(self._encoded_key)

    @property
    def entry_key(self) -> str | np.ndarray | None:
        """The record key as text; ``None`` without a key; a NumPy array of ``str`` for a
        batch of keys (``_encoded_key`` of shape ``(..., 128)``).

        Inside a JAX transformation the key is a tracer with no bytes to decode: then this
        returns ``'<traced key: cannot be decoded inside a JAX transformation>'`` instead of
        raising; likewise ``'<abstract key: ...>'`` for a ``ShapeDtypeStruct`` (what
        ``jax.eval_shape`` returns).
        """
        return decode_key(self._encoded_key)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return tree_equal(self, other)

    # Unhashable: it holds arrays, like any JAX pytree. None is Python's way to say so, which
    # typeshed's object.__hash__ (a method) does not allow for.
    __hash__ = None  # type: ignore[assignment]  # None marks it unhashable, see above

    def __repr__(self) -> str:
        fields = [f"{n}={getattr(self, n)!r}" for n in _LEAF_FIELDS[:-1]]
        try:
            fields.append(f"key={self.entry_key!r}")
        except ValueError:  # leaves mapped to something else (jax.tree.map): show them as held
            fields.append(f"_encoded_key={self._encoded_key!r}")
        fields.append(f"source_info={self.source_info!r}")
        return f"Metadata({', '.join(fields)})"

    def replace(self, **fields: Any) -> Metadata:
        """Returns a copy with ``fields`` replaced.

        Args:
            **fields: New values of dataclass fields; ``key=`` or ``record_key=`` (text,
                or ``None`` to drop the key) re-encodes the record key.

        Returns:
            A new Metadata; this one is unchanged.

        Raises:
            TypeError: An unknown field, or both ``key`` and ``record_key``.
        """
        if "key" in fields and "record_key" in fields:
            raise TypeError("Pass the record key as key= or as record_key=, not both.")
        if "key" in fields or "record_key" in fields:
            if "_encoded_key" in fields:
                raise TypeError("Pass either a record key or _encoded_key=, not both.")
            text = fields.pop("key", None) if "key" in fields else fields.pop("record_key")
            fields["_encoded_key"] = None
            fields["key"] = text
        unknown = set(fields) - {f.name for f in dataclasses.fields(self)} - {"key"}
        if unknown:
            raise TypeError(
                f"Metadata has no field(s) {sorted(unknown)}; accepted: "
                f"{[f.name for f in dataclasses.fields(self)] + ['key', 'record_key']}."
            )
        return dataclasses.replace(self, **fields)

    def split_rng(self, num: int = 2) -> list[jax.Array | None]:
        """Splits ``rng_key`` into ``num`` keys.

        Args:
            num: How many keys, ``>= 0``.

        Returns:
            ``list(jax.random.split(rng_key, num))``, or ``[None] * num`` without a key.
        """
        return split_rng(self.rng_key, num)

    def next_rng(self) -> Metadata:
        """Returns a copy whose ``rng_key`` is the second half of ``split(rng_key, 2)``.

        Without a key, returns ``self``.
        """
        if self.rng_key is None:
            return self
        return self.replace(rng_key=jax.random.split(self.rng_key, 2)[1])

    def increment_step(self) -> Metadata:
        """Returns a copy with ``global_step + 1``."""
        return self.replace(global_step=self.global_step + 1)

    def increment_epoch(self) -> Metadata:
        """Returns a copy with ``epoch + 1`` and ``batch_idx = 0``."""
        return self.replace(epoch=self.epoch + 1, batch_idx=0)

    def increment_batch(self) -> Metadata:
        """Returns a copy with ``batch_idx + 1`` (``None`` becomes ``0``)."""
        return self.replace(batch_idx=0 if self.batch_idx is None else self.batch_idx + 1)

    def with_shard(self, shard_id: int) -> Metadata:
        """Returns a copy with ``shard_id`` set.

        Args:
            shard_id: The shard identifier.
        """
        return self.replace(shard_id=shard_id)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, with the record key decoded under ``record_key``.

        Examples:
            >>> from datarax.core.metadata import Metadata
            >>> Metadata(index=1, key="a").to_dict()
            {'index': 1, 'epoch': 0, 'global_step': 0, 'batch_idx': None, 'shard_id': None, \
'rng_key': None, 'record_key': 'a', 'source_info': None}
        """
        return {
            "index": self.index,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_idx": self.batch_idx,
            "shard_id": self.shard_id,
            "rng_key": self.rng_key,
            "record_key": self.entry_key,
            "source_info": self.source_info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metadata:
        """Builds a Metadata from :meth:`to_dict`'s output.

        Args:
            data: Field values, with the record key text under ``record_key`` or ``key``.
                It is not modified.

        Returns:
            A new Metadata.

        Raises:
            TypeError: ``data`` has both ``record_key`` and ``key``, or an unknown entry.
        """
        fields = dict(data)
        if "record_key" in fields and "key" in fields:
            raise TypeError("from_dict accepts record_key or key, not both.")
        key = fields.pop("record_key", None) if "record_key" in fields else fields.pop("key", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise TypeError(
                f"Unknown Metadata entries {sorted(unknown)}; accepted: {sorted(known)}."
            )
        return cls(**fields, key=key)

    def merge(self, other: Metadata | None) -> Metadata:
        """Merges ``other`` into this metadata.

        ``other``'s value wins where it is non-zero (``index``, ``epoch``, ``global_step``)
        or non-``None`` (every other field); elsewhere this instance's value is kept.
        Array counters are merged element by element.

        Args:
            other: The metadata whose values win, or ``None``.

        Returns:
            A new Metadata; ``self`` when ``other`` is ``None``.
        """
        if other is None:
            return self
        if not isinstance(other, Metadata):
            raise TypeError(f"merge expects a Metadata or None, got {type(other).__name__}.")
        fields: dict[str, Any] = {
            n: _nonzero(getattr(self, n), getattr(other, n)) for n in _COUNTERS
        }
        for name in (*_OPTIONAL_COUNTERS, "rng_key", "_encoded_key", "source_info"):
            theirs = getattr(other, name)
            fields[name] = getattr(self, name) if theirs is None else theirs
        return dataclasses.replace(self, **fields)


def _nonzero(mine: Any, theirs: Any) -> Any:
    if isinstance(theirs, int | np.integer) or (
        np.ndim(theirs) == 0 and not isinstance(theirs, jax.core.Tracer)
    ):
        return theirs if theirs != 0 else mine
    return jnp.where(theirs != 0, theirs, mine)


def _check_encoded_key(value: Any) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    if not (
        isinstance(value, jax.Array | np.ndarray)
        and value.dtype == np.uint8
        and value.shape[-1:] == (MAX_KEY_LENGTH,)
    ):
        found = f"{getattr(value, 'dtype', type(value).__name__)} {np.shape(value)}"
        raise TypeError(
            f"_encoded_key must be a uint8 array of shape (..., {MAX_KEY_LENGTH}), got "
            f"{found}; pass the text as key= instead."
        )
    if not isinstance(value, jax.Array) or value.is_fully_addressable:
        check_encoded(np.asarray(value))  # so that entry_key, repr and to_dict never fail


def _flatten_with_keys(m: Metadata) -> tuple[tuple[tuple[GetAttrKey, Any], ...], StaticInfo]:
    d = m.__dict__
    return tuple((GetAttrKey(n), d[n]) for n in _LEAF_FIELDS), StaticInfo(d["source_info"])


def _flatten(m: Metadata) -> tuple[tuple[Any, ...], StaticInfo]:
    d = m.__dict__
    return tuple(d[n] for n in _LEAF_FIELDS), StaticInfo(d["source_info"])


def _unflatten(aux: StaticInfo, children: Any) -> Metadata:
    # No __init__: leaves may be tracers, ShapeDtypeStructs or sentinels during transforms.
    m = object.__new__(Metadata)
    m.__dict__.update(zip(_LEAF_FIELDS, children, strict=True))
    m.__dict__["source_info"] = aux.value
    return m


# A hand-written registration rather than register_dataclass: source_info is a dict, which
# cannot be hashed as aux data, so it travels inside the hashable StaticInfo wrapper.
jax.tree_util.register_pytree_with_keys(Metadata, _flatten_with_keys, _unflatten, _flatten)
