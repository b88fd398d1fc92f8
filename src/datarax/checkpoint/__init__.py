"""Orbax checkpointing for datarax metadata: exact resumption of a record stream.

Two async Orbax handlers, registered with their args so that a plain
``ocp.CheckpointManager`` saves them inside ``ocp.args.Composite`` next to model state:

- :class:`MetadataManagerCheckpointHandler`, with :class:`MetadataManagerSave` and
  :class:`MetadataManagerRestore`: a :class:`~datarax.core.metadata.MetadataManager`'s
  counters and RNG streams.
- :class:`MetadataCheckpointHandler`, with :class:`MetadataSave` and
  :class:`MetadataRestore`: any pytree of :class:`~datarax.core.metadata.Metadata`.

Every problem with an item is a :class:`MetadataCheckpointError`. The on-disk format is
described in ``docs/checkpoint-format.md``.
"""

from datarax.checkpoint.errors import MetadataCheckpointError as MetadataCheckpointError
from datarax.checkpoint.manager_handler import (
    MetadataManagerCheckpointHandler as MetadataManagerCheckpointHandler,
)
from datarax.checkpoint.manager_handler import MetadataManagerRestore as MetadataManagerRestore
from datarax.checkpoint.manager_handler import MetadataManagerSave as MetadataManagerSave
from datarax.checkpoint.metadata_handler import (
    MetadataCheckpointHandler as MetadataCheckpointHandler,
)
from datarax.checkpoint.metadata_handler import MetadataRestore as MetadataRestore
from datarax.checkpoint.metadata_handler import MetadataSave as MetadataSave

__all__ = [
    "MetadataCheckpointError",
    "MetadataCheckpointHandler",
    "MetadataManagerCheckpointHandler",
    "MetadataManagerRestore",
    "MetadataManagerSave",
    "MetadataRestore",
    "MetadataSave",
]

for _obj in (
    MetadataCheckpointHandler,
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
):
    _obj.__module__ = __name__
del _obj
from datarax.checkpoint import v1_registration as _v1_registration  # noqa: E402, F401
