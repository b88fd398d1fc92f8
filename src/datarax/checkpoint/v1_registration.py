"""Registers datarax's Orbax v1 handlers, so that both Orbax APIs read what the other wrote.

Imported by :mod:`datarax.checkpoint`; importing it again does nothing.

- **v1 saves datarax items in datarax's format.** :class:`MetadataHandler` and
  :class:`MetadataManagerHandler` are added to Orbax v1's global handler registry after
  Orbax's own handlers: v1 resolves a save to the *last* registered handler whose
  ``is_handleable`` accepts the object, so they win over the generic ``PyTreeHandler``
  (which would otherwise save a manager or a ``Metadata`` tree as plain arrays).
- **v1 loads steps that ``ocp.CheckpointManager`` wrote.** Orbax records each item's
  handler typestr in ``_CHECKPOINT_METADATA``; v1 matches it against each registered
  handler's typestr and its *secondary typestrs*, which list the v0 handlers' typestrs
  (the current one, and the forms earlier datarax versions wrote).
- **``ocp.CheckpointManager`` loads steps that v1 wrote.** The files are the v0 handlers'
  own, so restoring with explicit args works as for any step. ``restore(step)`` with no
  args looks each recorded typestr up in Orbax's handler type registry: a v0 handler whose
  ``typestr()`` is the v1 handler's is registered for each item, with its own args
  classes (Orbax finds args by the handler's exact class).
"""

from __future__ import annotations

import dataclasses

import orbax.checkpoint as ocp
import orbax.checkpoint.experimental.v1 as ocp_v1

from datarax.checkpoint.manager_handler import (
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
)
from datarax.checkpoint.metadata_handler import (
    MetadataCheckpointHandler,
    MetadataRestore,
    MetadataSave,
)
from datarax.checkpoint.v1_handlers import MetadataHandler, MetadataManagerHandler


def v1_typestr(handler_cls: type) -> str:
    """The typestr Orbax v1 records for a handler class (module and qualified name)."""
    return f"{handler_cls.__module__}.{handler_cls.__qualname__}"


def _v0_typestrs(handler_cls: type[ocp.AsyncCheckpointHandler], module: str) -> list[str]:
    """Every typestr a datarax version recorded for ``handler_cls``: its own, the one of
    its defining ``module``, and the one of the public package (which the handlers'
    renamed ``__module__`` gave up to now)."""
    names = [
        handler_cls.typestr(),
        f"datarax.checkpoint.{module}.{handler_cls.__qualname__}",
        f"datarax.checkpoint.{handler_cls.__qualname__}",
    ]
    return list(dict.fromkeys(names))


class V1MetadataCheckpointHandler(MetadataCheckpointHandler):
    """``MetadataCheckpointHandler`` under the typestr Orbax v1 records for its items, so
    that ``ocp.CheckpointManager.restore(step)`` finds a handler for them."""

    @classmethod
    def typestr(cls) -> str:
        """:class:`MetadataHandler`'s v1 typestr."""
        return v1_typestr(MetadataHandler)


class V1MetadataManagerCheckpointHandler(MetadataManagerCheckpointHandler):
    """``MetadataManagerCheckpointHandler`` under the typestr Orbax v1 records for its
    items."""

    @classmethod
    def typestr(cls) -> str:
        """:class:`MetadataManagerHandler`'s v1 typestr."""
        return v1_typestr(MetadataManagerHandler)


@ocp.args.register_with_handler(V1MetadataCheckpointHandler, for_save=True)
@dataclasses.dataclass
class _V1MetadataSave(MetadataSave):
    """Not used to save: Orbax requires save args for every handler it restores with."""


@ocp.args.register_with_handler(V1MetadataCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class _V1MetadataRestore(MetadataRestore):
    """What ``restore(step)`` with no args builds for an item v1 saved."""


@ocp.args.register_with_handler(V1MetadataManagerCheckpointHandler, for_save=True)
@dataclasses.dataclass
class _V1MetadataManagerSave(MetadataManagerSave):
    """Not used to save: Orbax requires save args for every handler it restores with."""


@ocp.args.register_with_handler(V1MetadataManagerCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class _V1MetadataManagerRestore(MetadataManagerRestore):
    """What ``restore(step)`` with no args builds for a manager item v1 saved."""


def _register() -> None:
    registry = ocp_v1.handlers.global_registry()
    registered = {handler for handler, _ in registry.get_all_entries()}
    pairs = (
        (MetadataHandler, MetadataCheckpointHandler, "metadata_handler"),
        (MetadataManagerHandler, MetadataManagerCheckpointHandler, "manager_handler"),
    )
    for v1_handler, v0_handler, module in pairs:
        if v1_handler not in registered:
            ocp_v1.handlers.register_handler(
                v1_handler, secondary_typestrs=_v0_typestrs(v0_handler, module)
            )


_register()
