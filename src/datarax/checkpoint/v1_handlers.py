"""Orbax v1 ``CheckpointableHandler``s for datarax items (``orbax.checkpoint.experimental.v1``).

:class:`MetadataHandler` saves pytrees of :class:`~datarax.core.metadata.Metadata` and
:class:`MetadataManagerHandler` a :class:`~datarax.core.metadata.MetadataManager`, in
datarax's own format: exactly what :class:`~datarax.checkpoint.MetadataCheckpointHandler`
and :class:`~datarax.checkpoint.MetadataManagerCheckpointHandler` write through
``ocp.CheckpointManager`` (per-process ``process_<i>.jsonl`` documents with their sha256,
Orbax's own files for global arrays), so either API loads what the other saved. Each v1
handler is a thin adapter over the v0 handler of its item: it never encodes or decodes
anything itself.

Orbax v1 has no ``finalize`` hook. A save therefore ends, in its background awaitable, as
Orbax's own v1 ``PyTreeHandler`` does: every process waits for its commit futures, all the
processes that save meet at a barrier, the primary process runs the v0 handler's
``finalize`` (the files that tie the item's files together, written once every process
committed), and all meet again before Orbax writes its checkpoint metadata and commits the
directory. Registration: :mod:`datarax.checkpoint.v1_registration`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
import orbax.checkpoint.experimental.v1 as ocp_v1
from etils import epath

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
from datarax.core.metadata import Metadata, MetadataManager, RecordMetadata

METADATA_KIND = "Metadata"
MANAGER_KIND = "MetadataManager"
"""The ``kind`` of the two items' documents (datarax's on-disk format)."""

Path = ocp_v1.path.Path
PathAwaitingCreation = ocp_v1.path.PathAwaitingCreation


def is_metadata_tree(value: Any, *, records: bool = False) -> bool:
    """Whether ``value`` is a pytree whose leaves are all ``Metadata`` (at least one); with
    ``records``, ``RecordMetadata`` leaves count too.

    Orbax asks this of every checkpointable of every save, a model's parameters included,
    so the walk stops at the first leaf that is not one (dicts, lists and tuples are walked
    here; other pytree nodes are flattened by JAX).
    """
    kinds = (Metadata, RecordMetadata) if records else (Metadata,)
    found = False
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, kinds):
            found = True
        elif isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list | tuple):
            pending.extend(node)
        elif node is not None:  # None is an empty pytree
            try:
                leaves = jax.tree.leaves(node, is_leaf=lambda x: isinstance(x, kinds))
            except (TypeError, ValueError):
                return False
            if not all(isinstance(leaf, kinds) for leaf in leaves):
                return False
            found = found or bool(leaves)
    return found


def _is_description(value: Any, kind: str) -> bool:
    """Whether ``value`` is what :meth:`metadata` returns for an item of ``kind``: loading
    with it as the abstract checkpointable means loading with no target."""
    return type(value) is dict and value.get("kind") == kind and "format_version" in value


class _SaveScope:
    """Who takes part in this save, read on the calling thread at ``save`` time."""

    def __init__(self, item: str) -> None:
        # Orbax 0.12.8 exports no accessor for the active v1 Context (which names the primary
        # host and the processes taking part) nor for the id of the save in progress (which
        # makes the barrier names unique and equal on every process); its own v1 handlers
        # read both from these private modules. Imported here, so that a change there breaks
        # v1 saves only; tests/test_checkpoint_orbax_v1.py checks both still exist.
        from orbax.checkpoint.experimental.v1._src.context import context as _v1_context
        from orbax.checkpoint.experimental.v1._src.synchronization import (
            synchronization as _v1_sync,
        )

        options = _v1_context.get_context().multiprocessing_options
        self.primary_host = options.primary_host
        self.processes = options.active_processes
        # One id per save, the same on every process; the item name tells items apart.
        self.operation_id = f"{_v1_sync.get_operation_id()}.datarax.{item}"

    async def barrier(self, name: str) -> None:
        """Waits until every process of the save reached ``name`` (no-op in one process)."""
        await ocp_v1.multihost.sync_global_processes(
            name, operation_id=self.operation_id, processes=self.processes
        )


async def _finish_save(
    v0: ocp.AsyncCheckpointHandler,
    directory: PathAwaitingCreation,
    futures: Sequence[ocp.future.Future],
    scope: _SaveScope,
) -> None:
    """The background part of a save: commit, barrier, finalize on the primary, barrier."""
    try:
        path = await directory.await_creation()
        for f in futures:  # they already run in Orbax's threads: wait off the event loop
            await asyncio.to_thread(f.result)
        await scope.barrier("datarax_commit_complete")
        if ocp_v1.multihost.is_primary_host(scope.primary_host):
            await asyncio.to_thread(v0.finalize, epath.Path(path))
        await scope.barrier("datarax_finalize_complete")
    finally:
        v0.close()


async def _start_save(
    v0: ocp.AsyncCheckpointHandler, directory: PathAwaitingCreation, args: Any
) -> Awaitable[None]:
    scope = _SaveScope(directory.path.name)
    futures = await v0.async_save(directory.path, args) or []
    later = _Later(_finish_save, v0, directory, futures, scope)
    # Read by Orbax's v0 wrapper of v1 handlers (training.Checkpointer) to cancel a save.
    later.commit_futures = list(futures)
    return later


class _Later:
    """An awaitable that creates its coroutine only when awaited: Orbax drops the
    awaitables of the other items when one item's save or load raises, and a coroutine
    never awaited is a ``RuntimeWarning``."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self._fn, self._args = fn, args
        self.commit_futures: list[ocp.future.Future] = []

    def __await__(self) -> Any:
        return self._fn(*self._args).__await__()


async def _identity(value: Any) -> Any:
    return value


def _done(value: Any) -> _Later:
    return _Later(_identity, value)


class MetadataHandler(ocp_v1.handlers.CheckpointableHandler[Any, Any]):
    """Saves and loads a pytree of ``Metadata`` with Orbax v1, in datarax's format.

    Registered globally (see :mod:`datarax.checkpoint.v1_registration`), so
    ``ocp_v1.save_checkpointables(path, {"batch": tree})`` uses it for any pytree whose
    leaves are all ``Metadata``. Load without an abstract checkpointable to rebuild the
    item from the checkpoint alone, or with a pytree shaped like the saved one (as
    :class:`~datarax.checkpoint.MetadataRestore` takes). Every problem with the item is a
    :class:`~datarax.checkpoint.MetadataCheckpointError`, raised by ``load_checkpointables``
    itself.

    Examples:
        >>> import tempfile
        >>> import orbax.checkpoint.experimental.v1 as ocp_v1
        >>> import datarax.checkpoint
        >>> from datarax.core.metadata import Metadata
        >>> batch = {"last": Metadata(index=7, epoch=1, source_info={"file": "a.rec"})}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     ocp_v1.save_checkpointables(f"{d}/1", {"batch": batch})
        ...     loaded = ocp_v1.load_checkpointables(f"{d}/1")
        ...     files = sorted(p.name for p in (ocp_v1.path.Path(d) / "1" / "batch").iterdir())
        >>> loaded["batch"] == batch, "process_0.jsonl" in files  # datarax's own document
        (True, True)
    """

    def __init__(self) -> None:
        self._v0 = MetadataCheckpointHandler()

    async def save(self, directory: PathAwaitingCreation, checkpointable: Any) -> Awaitable[None]:
        """Copies and checks the item now; returns the awaitable that writes it.

        Raises:
            MetadataCheckpointError: The item holds something that cannot be saved
                exactly; nothing is written.
        """
        return await _start_save(self._v0, directory, MetadataSave(checkpointable))

    async def load(self, directory: Path, abstract_checkpointable: Any = None) -> Awaitable[Any]:
        """Reads and verifies the item now (so errors reach the caller unwrapped)."""
        target = abstract_checkpointable
        if target is None or _is_description(target, METADATA_KIND):
            target = None
        value = await asyncio.to_thread(self._restore, directory, target)
        return _done(value)

    def _restore(self, directory: Path, target: Any) -> Any:
        try:
            return self._v0.restore(epath.Path(directory), MetadataRestore(target))
        finally:
            self._v0.close()

    async def metadata(self, directory: Path) -> dict[str, Any]:
        """The saved item's description (see ``MetadataCheckpointHandler.metadata``)."""
        return await asyncio.to_thread(self._v0.metadata, epath.Path(directory))

    def is_handleable(self, checkpointable: Any) -> bool:
        """Whether ``checkpointable`` is a pytree whose leaves are all ``Metadata``, or
        ``RecordMetadata``: those the save refuses, naming the conversion, where Orbax's
        ``PyTreeHandler`` would save their arrays and drop their ``source_info``."""
        return is_metadata_tree(checkpointable, records=True)

    def is_abstract_handleable(self, abstract_checkpointable: Any) -> bool:
        """A pytree of ``Metadata`` (the target), or what :meth:`metadata` returned."""
        return is_metadata_tree(abstract_checkpointable) or _is_description(
            abstract_checkpointable, METADATA_KIND
        )


class MetadataManagerHandler(ocp_v1.handlers.CheckpointableHandler[MetadataManager, Any]):
    """Saves and loads a ``MetadataManager`` with Orbax v1, in datarax's format.

    Registered globally, so ``ocp_v1.save_checkpointables(path, {"data": manager})`` uses
    it. Loading returns a *new* manager at the saved position: without an abstract
    checkpointable it is built from the checkpoint alone; with a manager as the abstract
    checkpointable, that manager is a template the saved one must match (same streams,
    same ``track_batches``) and is never changed.

    Examples:
        >>> import tempfile
        >>> import orbax.checkpoint.experimental.v1 as ocp_v1
        >>> from flax import nnx
        >>> import datarax.checkpoint
        >>> from datarax.core.metadata import MetadataManager
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
        >>> _ = manager.create_metadata(record_key=0)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     ocp_v1.save_checkpointables(f"{d}/1", {"data": manager})
        ...     resumed = ocp_v1.load_checkpointables(f"{d}/1")["data"]
        >>> a, b = manager.create_metadata(1), resumed.create_metadata(1)
        >>> resumed is manager, a.index == b.index, bool((a.rng_key == b.rng_key).all())
        (False, True, True)
    """

    def __init__(self) -> None:
        self._v0 = MetadataManagerCheckpointHandler()

    async def save(
        self, directory: PathAwaitingCreation, checkpointable: MetadataManager
    ) -> Awaitable[None]:
        """Copies the manager's position now; returns the awaitable that writes it."""
        return await _start_save(self._v0, directory, MetadataManagerSave(checkpointable))

    async def load(
        self, directory: Path, abstract_checkpointable: Any = None
    ) -> Awaitable[MetadataManager]:
        """Reads and verifies the item now; the awaitable returns a new manager."""
        template = abstract_checkpointable
        if template is None or _is_description(template, MANAGER_KIND):
            template = None
        value = await asyncio.to_thread(
            restore_new_manager, self._v0, epath.Path(directory), template
        )
        return _done(value)

    async def metadata(self, directory: Path) -> dict[str, Any]:
        """The saved item's description (see ``MetadataManagerCheckpointHandler.metadata``)."""
        return await asyncio.to_thread(self._v0.metadata, epath.Path(directory))

    def is_handleable(self, checkpointable: Any) -> bool:
        """Whether ``checkpointable`` is a ``MetadataManager``."""
        return isinstance(checkpointable, MetadataManager)

    def is_abstract_handleable(self, abstract_checkpointable: Any) -> bool:
        """A ``MetadataManager`` (a template), or what :meth:`metadata` returned."""
        return isinstance(abstract_checkpointable, MetadataManager) or _is_description(
            abstract_checkpointable, MANAGER_KIND
        )


def restore_new_manager(
    v0: MetadataManagerCheckpointHandler, directory: epath.Path, template: Any
) -> MetadataManager:
    """A new manager at the position saved in ``directory``; ``template`` (a manager built
    like the saved one, or ``None``) is only checked, never changed."""
    return v0.restore(directory, MetadataManagerRestore(template))
