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

import importlib as _importlib

import orbax.checkpoint as _ocp

from datarax.checkpoint.errors import MetadataCheckpointError as MetadataCheckpointError
from datarax.checkpoint.inspection import inspect as inspect
from datarax.checkpoint.inspection import latest_restorable_step as latest_restorable_step
from datarax.checkpoint.inspection import verify as verify
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
from datarax.checkpoint.reports import CheckpointReport as CheckpointReport

__all__ = [
    "CheckpointReport",
    "MetadataCheckpointError",
    "MetadataCheckpointHandler",
    "MetadataManagerCheckpointHandler",
    "MetadataManagerRestore",
    "MetadataManagerSave",
    "MetadataRestore",
    "MetadataSave",
    "inspect",
    "latest_restorable_step",
    "verify",
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
# Orbax writes ``handler.typestr()`` (the handler's ``__module__`` and name) into each step's
# metadata, and a fresh process restoring with no args looks that string up in Orbax's handler
# registry. The public names set just above are what every checkpoint so far has written, so
# each handler is registered again, now under its public name (registering its args again is
# Orbax's public way to do that; the registration made when its module was imported holds the
# module's own name, which no checkpoint names).
for _handler, _save in (
    (MetadataCheckpointHandler, MetadataSave),
    (MetadataManagerCheckpointHandler, MetadataManagerSave),
):
    _ocp.args.register_with_handler(_handler, for_save=True)(_save)
del _obj, _handler, _save
# Registering the handlers of Orbax's v1 API needs the handlers above: imported last.
_importlib.import_module("datarax.checkpoint.v1_registration")
