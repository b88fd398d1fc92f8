"""Metadata module with proper pytree registration for JAX compatibility.

This module provides metadata for tracking experiment state with proper separation of
static and dynamic fields to avoid JIT recompilation.

- :class:`Metadata`: experiment state (counters, an RNG key, a string record key) as a
  pytree whose dynamic fields are traced and whose ``source_info`` is static.
- :class:`RecordMetadata`: what a data source attaches to each record.
- :class:`MetadataManager`: an ``nnx.Module`` that hands out :class:`RecordMetadata`,
  one record or one whole batch at a time, and is checkpointed by
  :mod:`datarax.checkpoint`.
- :func:`create_metadata`, :func:`split_rng_tree`, :func:`batch_metadata`,
  :func:`update_metadata_batch`: helpers over :class:`Metadata`.
"""

from datarax.core._functions import (
    batch_metadata,
    create_metadata,
    split_rng_tree,
    update_metadata_batch,
)
from datarax.core._keys import MAX_KEY_LENGTH
from datarax.core._manager import MetadataManager
from datarax.core._metadata import Metadata
from datarax.core._record import RecordMetadata

__all__ = [
    "MAX_KEY_LENGTH",
    "Metadata",
    "MetadataManager",
    "RecordMetadata",
    "batch_metadata",
    "create_metadata",
    "split_rng_tree",
    "update_metadata_batch",
]

for _obj in (
    Metadata,
    MetadataManager,
    RecordMetadata,
    batch_metadata,
    create_metadata,
    split_rng_tree,
    update_metadata_batch,
):
    _obj.__module__ = __name__
del _obj
