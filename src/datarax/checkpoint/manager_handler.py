"""``MetadataManagerCheckpointHandler``: an async Orbax handler for a ``MetadataManager``."""

from __future__ import annotations

import dataclasses
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from datarax.checkpoint.errors import MetadataCheckpointError, check_args
from datarax.checkpoint.integrity import (
    process_file_name,
    read_process_document,
    write_document,
    write_document_async,
    write_item_manifest,
)
from datarax.checkpoint.manager_codec import (
    KIND,
    describe_manager,
    restore_manager,
    snapshot_manager,
)
from datarax.core.metadata import MetadataManager


class MetadataManagerCheckpointHandler(ocp.AsyncCheckpointHandler):
    """Saves and restores a :class:`~datarax.core.metadata.MetadataManager`, exactly.

    The item holds the manager's counters, ``shard_id``, ``track_batches`` and every
    ``nnx.Rngs`` stream (key data, typed or raw, impl, and count): the logical position, so
    the next ``create_metadata()`` after a restore continues exactly where the saved run
    would have. Each process writes and reads its own file, ``process_<i>.jsonl``; restoring
    with a different number of processes is an error that names both counts.

    The state (a few host values) is copied when :class:`MetadataManagerSave` is built, at
    the ``save`` call; the file is written in the commit future that :meth:`async_save`
    returns, so ``CheckpointManager.save`` returns at once and the manager may advance
    immediately.

    You rarely build this handler yourself: :class:`MetadataManagerSave` and
    :class:`MetadataManagerRestore` are registered with it, so a plain
    ``ocp.CheckpointManager`` finds it inside ``ocp.args.Composite``.

    Examples:
        >>> import tempfile
        >>> import jax
        >>> import orbax.checkpoint as ocp
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.checkpoint import MetadataManagerRestore, MetadataManagerSave
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
        >>> _ = manager.create_metadata(record_key=0)
        >>> with tempfile.TemporaryDirectory() as d, ocp.CheckpointManager(d) as mngr:
        ...     _ = mngr.save(1, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
        ...     mngr.wait_until_finished()
        ...     saved_next = manager.create_metadata(record_key=1)  # advance past the save
        ...     fresh = MetadataManager(rngs=nnx.Rngs(metadata=123))
        ...     restored = mngr.restore(
        ...         1, args=ocp.args.Composite(data=MetadataManagerRestore(fresh)))
        >>> restored["data"] is fresh
        True
        >>> resumed = fresh.create_metadata(record_key=1)
        >>> same_key = jax.random.key_data(resumed.rng_key) == jax.random.key_data(
        ...     saved_next.rng_key)
        >>> (resumed.index, bool(same_key.all()))
        (1, True)
    """

    async def async_save(
        self, directory: epath.Path, args: MetadataManagerSave
    ) -> list[ocp.future.Future]:
        """Returns the future that writes the state copied by ``args``.

        Args:
            directory: The item directory (it may be created asynchronously by Orbax; the
                write waits for Orbax's signal).
            args: The manager to save.

        Returns:
            One commit future writing this process's file.

        Raises:
            TypeError: ``args`` is not a :class:`MetadataManagerSave`.
            MetadataCheckpointError: The state holds a non-concrete value.
        """
        check_args("MetadataManagerCheckpointHandler", "save", args, MetadataManagerSave, "manager")
        doc = args.take_snapshot()
        path = epath.Path(directory) / process_file_name(doc["process_index"])
        return [
            ocp.future.CommitFutureAwaitingContractedSignals(
                write_document_async(path, doc), name="datarax_manager_save"
            )
        ]

    def save(self, directory: epath.Path, args: MetadataManagerSave) -> None:
        """Saves synchronously (what the commit future of :meth:`async_save` does, now)."""
        check_args("MetadataManagerCheckpointHandler", "save", args, MetadataManagerSave, "manager")
        doc = args.take_snapshot()
        write_document(epath.Path(directory) / process_file_name(doc["process_index"]), doc)
        if doc["process_count"] == 1:  # complete: Orbax's finalize writes the same manifest
            write_item_manifest(directory)

    def finalize(self, directory: epath.Path) -> None:
        """Writes ``item_manifest.jsonl``, which ties every process's file to this save.
        Orbax calls this on its primary process once every process has committed."""
        write_item_manifest(directory)

    def restore(self, directory: epath.Path, args: MetadataManagerRestore) -> MetadataManager:
        """Restores this process's saved state into ``args.manager`` and returns it.

        Raises:
            TypeError: ``args`` is not a :class:`MetadataManagerRestore`.
            MetadataCheckpointError: The item is missing, damaged, of a newer format, saved
                by another number of processes, or saved from a manager built differently
                (the manager is then left unchanged).
        """
        check_args(
            "MetadataManagerCheckpointHandler", "restore", args, MetadataManagerRestore, "manager"
        )
        doc, where = read_process_document(directory, KIND, "MetadataManagerRestore")
        try:
            return restore_manager(args.manager, doc, where)
        except (KeyError, TypeError) as e:
            raise MetadataCheckpointError(f"{where}: malformed manager document ({e!r}).") from e

    def metadata(self, directory: epath.Path) -> dict[str, Any]:
        """Describes the saved item: format version, process count, counters, streams."""
        doc, _ = read_process_document(directory, KIND, "MetadataManagerRestore")
        return describe_manager(doc)


@ocp.args.register_with_handler(MetadataManagerCheckpointHandler, for_save=True)
@dataclasses.dataclass
class MetadataManagerSave(ocp.args.CheckpointArgs):
    """Saves a :class:`~datarax.core.metadata.MetadataManager` (see
    :class:`MetadataManagerCheckpointHandler`).

    Attributes:
        manager: The manager to save. Its state is copied (and checked) when these args are
            built, at the ``save`` call; args used a second time copy the state again then.

    Examples:
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.checkpoint import MetadataManagerSave
        >>> MetadataManagerSave(MetadataManager()).manager.state.get_value()["index"]
        0
    """

    manager: MetadataManager
    _snapshot: dict[str, Any] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.manager, MetadataManager):
            raise TypeError(
                f"MetadataManagerSave expects a MetadataManager, got {type(self.manager).__name__}."
            )
        # Copy and check the state now, before Orbax starts the save: an error raised from
        # inside Orbax's async save would leave its directory-creation threads waiting.
        self._snapshot = snapshot_manager(self.manager)

    def take_snapshot(self) -> dict[str, Any]:
        """The state copied when these args were built, or, if they were used already
        (args reused for another save), the state now."""
        snapshot, self._snapshot = self._snapshot, None
        return snapshot_manager(self.manager) if snapshot is None else snapshot


@ocp.args.register_with_handler(MetadataManagerCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class MetadataManagerRestore(ocp.args.CheckpointArgs):
    """Restores into a :class:`~datarax.core.metadata.MetadataManager` built like the saved one.

    The restore returns ``manager`` itself, updated; a manager with other ``nnx.Rngs``
    streams or another ``track_batches`` is a
    :class:`~datarax.checkpoint.MetadataCheckpointError` naming the difference.

    Attributes:
        manager: The manager to update.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.checkpoint import MetadataManagerRestore
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0))  # built like the saved one
        >>> MetadataManagerRestore(manager).manager is manager
        True
        >>> MetadataManagerRestore("not a manager")
        Traceback (most recent call last):
        ...
        TypeError: MetadataManagerRestore expects the MetadataManager to restore into, got str.
    """

    manager: MetadataManager

    def __post_init__(self) -> None:
        if not isinstance(self.manager, MetadataManager):
            raise TypeError(
                "MetadataManagerRestore expects the MetadataManager to restore into, got "
                f"{type(self.manager).__name__}."
            )
