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
    write_item_manifest,
)
from datarax.checkpoint.manager_codec import (
    MANAGER_KIND,
    check_position,
    decode_manager,
    describe_manager,
    encode_manager,
)
from datarax.checkpoint.manager_template import built_alike, manager_differences
from datarax.checkpoint.manifest import whole_item
from datarax.checkpoint.step_tie import whole_item_tie
from datarax.checkpoint.sync_save import run_now, settle_refused_save
from datarax.core._position import build_manager, read_position
from datarax.core.metadata import MetadataManager


class MetadataManagerCheckpointHandler(ocp.AsyncCheckpointHandler):
    """Saves and restores a :class:`~datarax.core.metadata.MetadataManager`, exactly.

    The item holds the manager's counters, ``shard_id``, ``track_batches`` and every
    ``nnx.Rngs`` stream (key data, typed or raw, impl, and count): the logical position, so
    the next ``create_metadata()`` of the restored manager continues exactly where the saved
    run would have. Each process writes and reads its own file, ``process_<i>.jsonl``;
    restoring with a different number of processes is an error that names both counts.

    What is saved is the manager's position when ``CheckpointManager.save`` is called (in
    one instant, even with a loader thread creating records meanwhile), however long before
    the :class:`MetadataManagerSave` args were built; the file is written in the commit
    future that :meth:`async_save` returns, so the manager may advance at once. A restore
    returns a *new* manager; the one given to :class:`MetadataManagerRestore`, if any, is
    only checked against the saved one and never changed.

    You rarely build this handler yourself: :class:`MetadataManagerSave` and
    :class:`MetadataManagerRestore` are registered with it, so a plain
    ``ocp.CheckpointManager`` finds it inside ``ocp.args.Composite``, and restores the item
    with no args at all in a fresh process.

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
        ...     template = MetadataManager(rngs=nnx.Rngs(metadata=123))
        ...     restored = mngr.restore(
        ...         1, args=ocp.args.Composite(data=MetadataManagerRestore(template)))
        >>> resumed_manager = restored["data"]
        >>> resumed_manager is template, template.state.get_value()["index"]
        (False, 0)
        >>> resumed = resumed_manager.create_metadata(record_key=1)
        >>> same_key = jax.random.key_data(resumed.rng_key) == jax.random.key_data(
        ...     saved_next.rng_key)
        >>> (resumed.index, bool(same_key.all()))
        (1, True)
    """

    async def async_save(
        self, directory: epath.Path, args: MetadataManagerSave
    ) -> list[ocp.future.Future]:
        """Copies the manager's position now and returns the future that writes it.

        Args:
            directory: The item directory (it may be created asynchronously by Orbax; the
                write waits for Orbax's signal).
            args: The manager to save.

        Returns:
            One commit future writing this process's file.

        Raises:
            TypeError: ``args`` is not a :class:`MetadataManagerSave`.
            MetadataCheckpointError: The manager was changed, since the args were built, into
                something that cannot be saved (see :class:`MetadataManagerSave`); Orbax may
                then leave a temporary directory behind, as for any item that fails here.
        """
        check_args("MetadataManagerCheckpointHandler", "save", args, MetadataManagerSave, "manager")
        try:
            doc = encode_manager(read_position(args.manager))
        except MetadataCheckpointError as e:
            settle_refused_save()
            raise MetadataCheckpointError(
                f"{e} The manager changed after its MetadataManagerSave was built; Orbax may "
                "leave an unfinished temporary directory for this step, which it removes when "
                "the step is saved again."
            ) from None
        path = epath.Path(directory) / process_file_name(doc["process_index"])
        return [
            ocp.future.CommitFutureAwaitingContractedSignals(
                _write_manager(path, doc), name="datarax_manager_save"
            )
        ]

    def save(self, directory: epath.Path, args: MetadataManagerSave) -> None:
        """Saves synchronously: :meth:`async_save`, then its commit future, now. A single
        process's item is then complete (its document is the whole item)."""
        run_now(self.async_save(directory, args))

    def restore(
        self, directory: epath.Path, args: MetadataManagerRestore | None = None
    ) -> MetadataManager:
        """A new manager at the saved position.

        Args:
            directory: The item directory.
            args: Optionally a template manager that the saved one must be built like.

        Returns:
            A new :class:`~datarax.core.metadata.MetadataManager`; ``args.manager`` is never
            changed.

        Raises:
            TypeError: ``args`` is not a :class:`MetadataManagerRestore`.
            MetadataCheckpointError: The item is missing, damaged, of a newer format, saved
                by another number of processes, or saved from a manager built differently
                from the template.
        """
        if args is not None:
            check_args(
                "MetadataManagerCheckpointHandler", "restore", args, MetadataManagerRestore, ""
            )
        doc, where = read_process_document(directory, MANAGER_KIND, "MetadataManagerRestore")
        position = decode_manager(doc, where)
        template = None if args is None else args.manager
        if template is not None and not built_alike(template, position):
            differences = manager_differences(read_position(template), position)
            if differences:
                raise MetadataCheckpointError(
                    f"{where}: the template manager is built differently from the saved one: "
                    + "; ".join(differences)
                    + ". Build it with the same nnx.Rngs streams and track_batches as the "
                    "saved run, or restore with MetadataManagerRestore() to build the manager "
                    "from the checkpoint alone."
                )
        return build_manager(position)

    def metadata(self, directory: epath.Path) -> dict[str, Any]:
        """Describes the saved item: format version, process count, counters, streams."""
        doc, where = read_process_document(directory, MANAGER_KIND, "MetadataManagerRestore")
        return describe_manager(doc, where)

    def finalize(self, directory: epath.Path) -> None:
        """For an item saved by several processes, writes ``item_manifest.jsonl``, which ties
        every process's file to this save. Orbax runs this once, on its primary process,
        after every process committed. A single process's document is the whole item and
        ties itself to its step: nothing is written."""
        if not whole_item():
            write_item_manifest(directory)


async def _write_manager(path: epath.Path, doc: dict[str, Any]) -> None:
    """Writes this process's document: the whole item's, tied to its step, when this job
    runs one process."""
    tie = whole_item_tie(path.parent) if whole_item() else None
    write_document(path, doc, tie=tie)


@ocp.args.register_with_handler(MetadataManagerCheckpointHandler, for_save=True)
@dataclasses.dataclass
class MetadataManagerSave(ocp.args.CheckpointArgs):
    """Saves a :class:`~datarax.core.metadata.MetadataManager` (see
    :class:`MetadataManagerCheckpointHandler`).

    The manager is checked when these args are built, so that a manager that cannot be
    saved (a negative counter, a tracer inside a JAX transformation) fails at the ``save``
    call, before Orbax creates any directory. Its position is copied later, when
    ``CheckpointManager.save`` is called: args may be built once and reused for every save.

    Attributes:
        manager: The manager to save.

    Examples:
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.checkpoint import MetadataManagerSave
        >>> manager = MetadataManager()
        >>> MetadataManagerSave(manager).manager is manager
        True
        >>> manager.state.set_value({**manager.state.get_value(), "epoch": -1})
        >>> MetadataManagerSave(manager)
        Traceback (most recent call last):
        ...
        datarax.checkpoint.MetadataCheckpointError: Cannot save manager.state['epoch']: ...
    """

    manager: MetadataManager

    def __post_init__(self) -> None:
        if not isinstance(self.manager, MetadataManager):
            raise TypeError(
                f"MetadataManagerSave expects a MetadataManager, got {type(self.manager).__name__}."
            )
        # Raised from inside Orbax's async save, an error would leave Orbax's
        # directory-creation thread waiting, and the directory behind: check now.
        check_position(read_position(self.manager))


@ocp.args.register_with_handler(MetadataManagerCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class MetadataManagerRestore(ocp.args.CheckpointArgs):
    """Restores a new :class:`~datarax.core.metadata.MetadataManager` at the saved position.

    With a template, the saved manager must have been built like it (the same ``nnx.Rngs``
    streams, with keys of the same impl and shape, and the same ``track_batches``); a
    difference is a :class:`~datarax.checkpoint.MetadataCheckpointError` listing every one.
    The template itself is never changed, so a restore that fails (this item or any other
    of the ``Composite``) leaves it as it was. Without a template the manager is built from
    the checkpoint alone, as ``CheckpointManager.restore(step)`` with no args does.

    Attributes:
        manager: Optional template manager.

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> from datarax.checkpoint import MetadataManagerRestore
        >>> template = MetadataManager(rngs=nnx.Rngs(metadata=0))  # built like the saved one
        >>> MetadataManagerRestore(template).manager is template
        True
        >>> MetadataManagerRestore().manager is None  # build it from the checkpoint alone
        True
        >>> MetadataManagerRestore("not a manager")
        Traceback (most recent call last):
        ...
        TypeError: MetadataManagerRestore expects a template MetadataManager or None, got str.
    """

    manager: MetadataManager | None = None

    def __post_init__(self) -> None:
        if self.manager is not None and not isinstance(self.manager, MetadataManager):
            raise TypeError(
                "MetadataManagerRestore expects a template MetadataManager or None, got "
                f"{type(self.manager).__name__}."
            )
