"""The seed API's free functions over :class:`Metadata`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from datarax.core._checks import check_counter
from datarax.core._jit import typed_jit
from datarax.core._metadata import Metadata
from datarax.core._rng import split_rng


def create_metadata(
    index: int = 0,
    epoch: int = 0,
    global_step: int = 0,
    batch_idx: int | None = None,
    shard_id: int | None = None,
    record_key: str | None = None,
    source_info: dict[str, Any] | None = None,
    rng_key: jax.Array | None = None,
    seed: int | None = None,
) -> Metadata:
    """Create metadata with optional RNG initialization.

    Args:
        index: Position of the record in the stream.
        epoch: Current epoch number.
        global_step: Global step across all epochs.
        batch_idx: Optional batch index within the current epoch.
        shard_id: Optional shard identifier for distributed processing.
        record_key: Optional record key text, at most 128 UTF-8 bytes.
        source_info: Optional source-specific metadata (static).
        rng_key: Optional typed or raw JAX key.
        seed: Without ``rng_key``, makes ``rng_key = jax.random.key(seed)``; ignored when
            ``rng_key`` is given.

    Returns:
        A new Metadata.

    Examples:
        >>> from datarax.core.metadata import create_metadata
        >>> m = create_metadata(index=5, record_key="a.jpg", seed=0)
        >>> m.entry_key, m.rng_key.dtype
        ('a.jpg', key<fry>)
    """
    if rng_key is None and seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}.")
        rng_key = jax.random.key(seed)
    return Metadata(
        index=index,
        epoch=epoch,
        global_step=global_step,
        batch_idx=batch_idx,
        shard_id=shard_id,
        rng_key=rng_key,
        source_info=source_info,
        key=record_key,
    )


def split_rng_tree(metadata: Metadata, num: int = 2) -> dict[str, jax.Array | None]:
    """Split RNG key into named dictionary.

    Args:
        metadata: The metadata whose ``rng_key`` is split.
        num: How many keys, ``>= 0``.

    Returns:
        The keys of ``jax.random.split(rng_key, num)`` named ``a``, ``b``, then ``key_2``,
        ``key_3``, ...; without an ``rng_key``,
        ``{'key_0': None, ..., f'key_{num - 1}': None}``.

    Examples:
        >>> from datarax.core.metadata import create_metadata, split_rng_tree
        >>> list(split_rng_tree(create_metadata(seed=0), 4))
        ['a', 'b', 'key_2', 'key_3']
        >>> split_rng_tree(create_metadata(), 2)
        {'key_0': None, 'key_1': None}
    """
    keys = split_rng(metadata.rng_key, num)
    if metadata.rng_key is None:
        return {f"key_{i}": None for i in range(len(keys))}
    names = ["a", "b", *(f"key_{i}" for i in range(2, len(keys)))][: len(keys)]
    return dict(zip(names, keys, strict=True))


def batch_metadata(metadata_list: list[Metadata]) -> Metadata:
    """Combine multiple metadata into batch metadata.

    Args:
        metadata_list: The metadata of the batch's records.

    Returns:
        ``Metadata()`` for an empty list. Otherwise ``epoch`` and ``global_step`` are the
        maxima; ``batch_idx`` and ``shard_id`` the first non-``None`` values; ``index``,
        ``rng_key``, the record key and ``source_info`` come from the first element.
    """
    if not metadata_list:
        return Metadata()
    for i, m in enumerate(metadata_list):
        if not isinstance(m, Metadata):
            raise TypeError(f"batch_metadata expects Metadata; element {i} is {type(m).__name__}.")
    first = metadata_list[0]
    return Metadata(
        index=first.index,
        epoch=max(m.epoch for m in metadata_list),
        global_step=max(m.global_step for m in metadata_list),
        batch_idx=next((m.batch_idx for m in metadata_list if m.batch_idx is not None), None),
        shard_id=next((m.shard_id for m in metadata_list if m.shard_id is not None), None),
        rng_key=first.rng_key,
        _encoded_key=first._encoded_key,
        source_info=first.source_info,
    )


@typed_jit()
def _update_metadata_batch(metadata: Metadata, batch_size: Any) -> Metadata:
    batch_idx = 1 if metadata.batch_idx is None else metadata.batch_idx + 1
    return metadata.replace(global_step=metadata.global_step + batch_size, batch_idx=batch_idx)


def update_metadata_batch(metadata: Metadata, batch_size: int | jax.Array) -> Metadata:
    """Update metadata after processing a batch: ``global_step += batch_size`` and
    ``batch_idx += 1`` (``None`` becomes ``1``).

    Compiled with ``jax.jit`` (``batch_size`` is traced, so batch sizes share one
    compilation).

    Args:
        metadata: The metadata to update.
        batch_size: Records in the batch, ``>= 0``.

    Returns:
        A new Metadata whose updated counters are JAX arrays, as jit results are.

    Raises:
        ValueError: A negative ``batch_size``.
        TypeError: A ``batch_size`` that is not an integer.
    """
    if not isinstance(metadata, Metadata):
        raise TypeError(f"update_metadata_batch expects a Metadata, got {type(metadata).__name__}.")
    check_counter("batch_size", batch_size)
    if not isinstance(batch_size, int | jax.core.Tracer) and (np.asarray(batch_size) < 0).any():
        raise ValueError(f"batch_size must be >= 0, got {batch_size}.")
    return _update_metadata_batch(metadata, batch_size)
