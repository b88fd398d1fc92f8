"""``MetadataCheckpointHandler``: an async Orbax handler for pytrees of ``Metadata``."""

from __future__ import annotations

import dataclasses
import threading
import warnings
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from datarax.checkpoint.codec import (
    _NO_TARGET,
    KIND,
    EncodedItem,
    decode_item,
    describe_item,
    encode_item,
    global_requests,
)
from datarax.checkpoint.errors import MetadataCheckpointError, check_args
from datarax.checkpoint.integrity import (
    FORMAT_VERSION,
    hash_files,
    process_file_name,
    read_document,
    read_process_document,
    verify_files,
    write_document,
    write_document_async,
)

ARRAYS_MANIFEST = "arrays_manifest.jsonl"
"""Lists the size and sha256 of every file Orbax wrote for the item's global arrays."""


class MetadataCheckpointHandler(ocp.AsyncCheckpointHandler):
    """Saves and restores any pytree of :class:`~datarax.core.metadata.Metadata`, exactly.

    Each process writes its own document, ``process_<i>.jsonl``: the item's structure, every
    field's container (Python int, NumPy or JAX array, typed or raw key with its impl) and
    value, and ``source_info``. A ``jax.Array`` spread over several devices (the metadata of
    a global batch) is written by Orbax's own array serialization from every device, and
    restores with the target's sharding. A ``source_info`` value that would not come back
    equal and of the same type is refused before anything is written.

    The values are copied and checked when :class:`MetadataSave` is built, that is at the
    ``save`` call, so an item that cannot be saved fails before Orbax starts; files are
    written in the commit futures that :meth:`async_save` returns.

    Examples:
        >>> import tempfile
        >>> import orbax.checkpoint as ocp
        >>> from datarax.core.metadata import Metadata
        >>> from datarax.checkpoint import MetadataRestore, MetadataSave
        >>> item = {"last": Metadata(index=7, epoch=1, key="shard-3/0007",
        ...                          source_info={"files": ("a.rec", "b.rec")})}
        >>> with tempfile.TemporaryDirectory() as d, ocp.CheckpointManager(d) as mngr:
        ...     _ = mngr.save(1, args=ocp.args.Composite(meta=MetadataSave(item)))
        ...     mngr.wait_until_finished()
        ...     restored = mngr.restore(1, args=ocp.args.Composite(meta=MetadataRestore()))
        >>> restored["meta"] == item
        True
        >>> restored["meta"]["last"].source_info
        {'files': ('a.rec', 'b.rec')}
    """

    def __init__(self) -> None:
        self._arrays_handler: ocp.PyTreeCheckpointHandler | None = None
        self._pending_manifests: set[str] = set()
        self._lock = threading.Lock()

    @property
    def _arrays(self) -> ocp.PyTreeCheckpointHandler:
        """Orbax's handler for global arrays, built when an item first has some."""
        if self._arrays_handler is None:
            self._arrays_handler = ocp.PyTreeCheckpointHandler()
        return self._arrays_handler

    async def async_save(
        self, directory: epath.Path, args: MetadataSave
    ) -> list[ocp.future.Future]:
        """Returns the futures that write the values copied by ``args``.

        Args:
            directory: The item directory (it may be created asynchronously by Orbax; writes
                wait for Orbax's signal).
            args: The item to save.

        Returns:
            The commit futures: this process's document, and Orbax's for global arrays.

        Raises:
            TypeError: ``args`` is not a :class:`MetadataSave`.
            MetadataCheckpointError: The item holds something that cannot be saved exactly;
                nothing is written.
        """
        check_args("MetadataCheckpointHandler", "save", args, MetadataSave, "...")
        encoded = args.take_snapshot()
        directory = epath.Path(directory)
        futures: list[ocp.future.Future] = []
        if encoded.global_arrays:
            with self._lock:
                self._pending_manifests.add(str(directory))
            futures.extend(
                await self._arrays.async_save(
                    directory, args=ocp.args.PyTreeSave(encoded.global_arrays)
                )
                or []
            )
        path = directory / process_file_name(encoded.doc["process_index"])
        futures.append(
            ocp.future.CommitFutureAwaitingContractedSignals(
                write_document_async(path, encoded.doc), name="datarax_metadata_save"
            )
        )
        return futures

    def save(self, directory: epath.Path, args: MetadataSave) -> None:
        """Saves synchronously. Call :meth:`finalize` afterwards, as Orbax's checkpointers
        do, when the item has global arrays."""
        check_args("MetadataCheckpointHandler", "save", args, MetadataSave, "...")
        encoded = args.take_snapshot()
        directory = epath.Path(directory)
        if encoded.global_arrays:
            with self._lock:
                self._pending_manifests.add(str(directory))
            self._arrays.save(directory, args=ocp.args.PyTreeSave(encoded.global_arrays))
        write_document(directory / process_file_name(encoded.doc["process_index"]), encoded.doc)

    def finalize(self, directory: epath.Path) -> None:
        """Finishes Orbax's array files and lists them with their sha256 in
        ``arrays_manifest.jsonl``. Orbax calls this on its primary process, after every
        process has committed. Nothing to do for an item without global arrays.
        """
        with self._lock:
            if str(directory) not in self._pending_manifests:
                return
            self._pending_manifests.discard(str(directory))
        directory = epath.Path(directory)
        self._arrays.finalize(directory)
        # Orbax calls finalize on its primary process only, once every process committed.
        files = hash_files(directory, exclude={ARRAYS_MANIFEST})
        files = {k: v for k, v in files.items() if not _is_process_file(k)}
        doc = {"format_version": FORMAT_VERSION, "kind": "arrays_manifest", "files": files}
        write_document(directory / ARRAYS_MANIFEST, doc)

    def restore(self, directory: epath.Path, args: MetadataRestore | None = None) -> Any:
        """Restores the item: into ``args.target``'s structure and shardings when given,
        else rebuilt from the directory alone.

        Raises:
            TypeError: ``args`` is not a :class:`MetadataRestore`.
            MetadataCheckpointError: The item is missing, damaged, of a newer format, saved
                by another number of processes, or does not match the target.
        """
        args = MetadataRestore() if args is None else args
        check_args("MetadataCheckpointHandler", "restore", args, MetadataRestore, "...")
        directory = epath.Path(directory)
        doc, where = read_process_document(directory, KIND, "MetadataRestore")
        target = _NO_TARGET if args.target is None else args.target
        try:
            requests = global_requests(doc, target)
            values = self._restore_arrays(directory, requests) if requests else {}
            return decode_item(doc, where, target, values)
        except (KeyError, TypeError, AttributeError) as e:
            raise MetadataCheckpointError(f"{where}: malformed Metadata document ({e!r}).") from e

    def _restore_arrays(self, directory: epath.Path, requests: dict[str, Any]) -> dict[str, Any]:
        manifest = read_document(directory / ARRAYS_MANIFEST)
        if manifest.get("kind") != "arrays_manifest":
            raise MetadataCheckpointError(f"{directory / ARRAYS_MANIFEST}: not a manifest.")
        verify_files(directory, manifest.get("files"), str(directory / ARRAYS_MANIFEST))
        restore_args = {
            name: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=shape, dtype=dtype)
            if sharding is not None
            else ocp.ArrayRestoreArgs(global_shape=shape, dtype=dtype)
            for name, (dtype, shape, sharding) in requests.items()
        }
        try:
            with warnings.catch_warnings():
                # Without a target, the saved sharding is what is asked for.
                warnings.filterwarnings("ignore", "Sharding info not provided", UserWarning)
                values = self._arrays.restore(
                    directory, args=ocp.args.PyTreeRestore(restore_args=restore_args)
                )
        except Exception as e:  # Orbax and tensorstore raise many types; report them alike
            raise MetadataCheckpointError(
                f"{directory}: Orbax could not restore the item's global arrays "
                f"({type(e).__name__}: {e})."
            ) from e
        for name, (dtype, shape, _) in requests.items():
            value = values.get(name)
            if value is None or value.dtype != dtype or value.shape != shape:
                raise MetadataCheckpointError(
                    f"{directory}: global array {name!r} came back as {value!r}, expected "
                    f"{dtype}{list(shape)}."
                )
        return values

    def metadata(self, directory: epath.Path) -> dict[str, Any]:
        """Describes the saved item: format version, process count, and per Metadata node
        how each field is held."""
        doc, _ = read_process_document(directory, KIND, "MetadataRestore")
        return describe_item(doc)

    def close(self) -> None:
        """Closes the handler used for global arrays."""
        if self._arrays_handler is not None:
            self._arrays_handler.close()


def _is_process_file(rel: str) -> bool:
    return "/" not in rel and rel.startswith("process_") and rel.endswith(".jsonl")


@ocp.args.register_with_handler(MetadataCheckpointHandler, for_save=True)
@dataclasses.dataclass
class MetadataSave(ocp.args.CheckpointArgs):
    """Saves a pytree of :class:`~datarax.core.metadata.Metadata` (see
    :class:`MetadataCheckpointHandler`).

    Attributes:
        item: One ``Metadata``, or dicts, lists, tuples (or any pytree) of them; fields
            may be Python ints, NumPy or JAX arrays (for instance of shape ``[B]``, for a
            batch), typed or raw keys. Its values are copied (and checked) when these args
            are built, at the ``save`` call; args used a second time copy them again then.

    Examples:
        >>> from datarax.core.metadata import Metadata
        >>> from datarax.checkpoint import MetadataSave
        >>> MetadataSave([Metadata(index=1), Metadata(index=2)]).item[1].index
        2
    """

    item: Any
    _snapshot: EncodedItem | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Copy and check the values now, before Orbax starts the save: an error raised from
        # inside Orbax's async save would leave its directory-creation threads waiting.
        self._snapshot = encode_item(self.item)

    def take_snapshot(self) -> EncodedItem:
        """The values copied when these args were built, or, if they were used already
        (args reused for another save), the values now."""
        snapshot, self._snapshot = self._snapshot, None
        return encode_item(self.item) if snapshot is None else snapshot


@ocp.args.register_with_handler(MetadataCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class MetadataRestore(ocp.args.CheckpointArgs):
    """Restores a pytree of :class:`~datarax.core.metadata.Metadata`.

    Attributes:
        target: Optional pytree shaped like the saved item. Its containers are reused, each
            field must be held like the saved one (int, array of the same dtype and shape,
            key of the same impl), and array fields come back in the target leaf's
            container and sharding (a ``jax.ShapeDtypeStruct`` with a sharding will do).
            Without it the item is rebuilt from the checkpoint alone.

    Examples:
        >>> import jax
        >>> from datarax.core.metadata import Metadata
        >>> from datarax.checkpoint import MetadataRestore
        >>> like_saved = {"last": Metadata(index=0, rng_key=jax.random.key(0))}
        >>> MetadataRestore(like_saved).target["last"].index  # restore into this structure
        0
        >>> MetadataRestore().target is None  # rebuild from the checkpoint alone
        True
    """

    target: Any = None
