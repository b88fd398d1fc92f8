"""``RecordMetadata`` (what a ``MetadataManager`` hands out) as a ``Metadata`` to save."""

from __future__ import annotations

from typing import Any

import numpy as np

from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.core._keys import MAX_KEY_LENGTH, encode_key_bytes
from datarax.core.metadata import Metadata, RecordMetadata


def record_to_metadata(record: RecordMetadata) -> Metadata:
    """The :class:`~datarax.core.metadata.Metadata` of one record or of a batch (what
    ``MetadataManager.create_metadata`` and ``create_batch_metadata`` return), ready for
    :class:`~datarax.checkpoint.MetadataSave`: the same counters, ``shard_id``,
    ``rng_key`` and ``source_info``, and a ``str`` record key (or an array of them) as the
    encoded key.

    Args:
        record: A ``RecordMetadata``.

    Returns:
        The ``Metadata``; its fields are the record's own arrays (nothing is copied).

    Raises:
        MetadataCheckpointError: A record key that is not ``str`` (a ``Metadata`` holds
            text keys only), or a key longer than 128 UTF-8 bytes.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.checkpoint.records import record_to_metadata
        >>> batch = MetadataManager(rngs=nnx.Rngs(metadata=0)).create_batch_metadata(["a", "b"])
        >>> m = record_to_metadata(batch)
        >>> m.index.tolist(), m._encoded_key.shape
        ([0, 1], (2, 128))
    """
    if not isinstance(record, RecordMetadata):
        raise TypeError(
            f"record_to_metadata expects a RecordMetadata, got {type(record).__name__}."
        )
    return Metadata(
        index=record.index, epoch=record.epoch, global_step=record.global_step,
        batch_idx=record.batch_idx, shard_id=record.shard_id, rng_key=record.rng_key,
        _encoded_key=_encoded_keys(record.record_key), source_info=record.source_info,
    )  # fmt: skip


def _encoded_keys(key: Any) -> np.ndarray | None:
    if key is None:
        return None
    try:
        if isinstance(key, str):
            return encode_key_bytes(key)
        if isinstance(key, np.ndarray) and key.dtype.kind == "U":
            out = np.zeros((*key.shape, MAX_KEY_LENGTH), np.uint8)
            flat = out.reshape(-1, MAX_KEY_LENGTH)
            for i, text in enumerate(key.reshape(-1).tolist()):
                flat[i] = encode_key_bytes(text)
            return out
    except ValueError as e:
        raise MetadataCheckpointError(f"Cannot convert record_key: {e}") from e
    raise MetadataCheckpointError(
        f"Cannot convert a record_key of type {type(key).__name__} "
        f"{getattr(key, 'dtype', '')}: a Metadata holds str record keys only. Save such keys "
        "in an item of their own (e.g. ocp.args.StandardSave), or use str keys."
    )
