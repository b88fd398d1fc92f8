"""``MetadataCheckpointHandler``: an async Orbax handler for pytrees of ``Metadata``."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import warnings
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from datarax.checkpoint.array_files import verify_files
from datarax.checkpoint.blob_digest import BlobCheck, start_digest
from datarax.checkpoint.codec import (
    _NO_TARGET,
    KIND,
    EncodedItem,
    decode_item,
    describe_item,
    encode_item,
    global_requests,
)
from datarax.checkpoint.documents import (
    blob_file_name,
    local_name,
    parse_document,
    process_file_name,
    write_bytes,
    write_document,
)
from datarax.checkpoint.errors import MetadataCheckpointError, check_args
from datarax.checkpoint.manifest import (
    ARRAYS_MANIFEST,
    ITEM_MANIFEST,
    ItemDocument,
    read_item_document,
    read_manifest,
    whole_item,
    write_item_manifest,
)
from datarax.checkpoint.metadata_schema import check_document
from datarax.checkpoint.safe_files import read_item_file
from datarax.checkpoint.shardings import missing_devices_note
from datarax.checkpoint.step_tie import whole_item_tie
from datarax.checkpoint.sync_save import run_now, settle_refused_save


class MetadataCheckpointHandler(ocp.AsyncCheckpointHandler):
    """Saves and restores any pytree of :class:`~datarax.core.metadata.Metadata`, exactly.

    Each process writes its own document, ``process_<i>.jsonl``: the item's structure, every
    field's container (Python int, NumPy or JAX array, typed or raw key with its impl) and
    value, and ``source_info``. A ``jax.Array`` spread over several processes (the metadata
    of a global batch) is written by Orbax's own array serialization from every process;
    one on several devices of this process is written like a host array, with its
    sharding. Either restores with the target's sharding (without one, the saved one). A
    ``source_info`` value that would not come back equal and of the same type is refused
    before anything is written.

    The item is checked when :class:`MetadataSave` is built, so an item that cannot be saved
    fails before Orbax starts; its values are taken at :meth:`async_save`'s entry (the
    ``CheckpointManager.save`` call), and files are written in the commit futures it
    returns. Large host arrays go to a binary file, ``process_<i>.bin``, small ones into
    the document. Saved by several processes (or with Orbax's array files), the item then gets
    ``item_manifest.jsonl`` from ``finalize``, listing every file; a single process's
    document, written last, is the whole item and ties itself to its step.

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
        """Takes the item's values now and returns the futures that write them.

        Args:
            directory: The item directory (it may be created asynchronously by Orbax; writes
                wait for Orbax's signal).
            args: The item to save.

        Returns:
            The commit futures: this process's document (and blob), and Orbax's for global
            arrays.

        Raises:
            TypeError: ``args`` is not a :class:`MetadataSave`.
            MetadataCheckpointError: The item changed since ``args`` were built and now
                holds something that cannot be saved exactly; nothing of the item is
                written (Orbax may leave the step's temporary directory, which the next
                save of that step replaces).
        """
        check_args("MetadataCheckpointHandler", "save", args, MetadataSave, "...")
        try:
            encoded = args.take_snapshot()
        except MetadataCheckpointError:
            settle_refused_save()
            raise
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
        whole = whole_item(bool(encoded.global_arrays))
        futures.append(
            ocp.future.CommitFutureAwaitingContractedSignals(
                _write_process_async(directory, encoded, whole), name="datarax_metadata_save"
            )
        )
        return futures

    def save(self, directory: epath.Path, args: MetadataSave) -> None:
        """Saves synchronously: :meth:`async_save`, then its commit futures, now. Call
        :meth:`finalize` afterwards, as Orbax's checkpointers do; a single process's item
        without global arrays is complete without it (its document is the whole item)."""
        run_now(self.async_save(directory, args))

    def finalize(self, directory: epath.Path) -> None:
        """Finishes Orbax's array files (if any) and, for an item saved by several
        processes or with Orbax's array files, writes ``item_manifest.jsonl``, which lists
        every file of the item. Orbax calls this on its primary process only, once every
        process has committed (after its ``async_write_complete`` barrier). A single
        process's other items need nothing more: the document, written last, is the whole
        item and ties itself to its step.
        """
        with self._lock:
            arrays = str(directory) in self._pending_manifests
            self._pending_manifests.discard(str(directory))
        directory = epath.Path(directory)
        if arrays:
            self._arrays.finalize(directory)
        if not whole_item(arrays):
            write_item_manifest(directory)

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
        read = read_item_document(directory, KIND, "MetadataRestore")
        doc, where = read.doc, read.where
        check_document(doc, where)
        target = _NO_TARGET if args.target is None else args.target
        requests = global_requests(doc, target)
        values = self._restore_arrays(directory, requests, read) if requests else {}
        if "blob" not in doc:
            return decode_item(doc, where, target, values, checked=True)
        blob, differs = _read_blob(directory, doc)
        # The arrays are built while the blob is hashed (hashlib releases the GIL); they
        # are returned only once the digest matched. Where building them fails, a damaged
        # blob is the cause to report, not the bad value it decoded to.
        try:
            restored = decode_item(doc, where, target, values, blob, checked=True)
        except Exception:
            _check_blob(directory, doc, differs.result())
            raise
        _check_blob(directory, doc, differs.result())
        return restored

    def _restore_arrays(
        self, directory: epath.Path, requests: dict[str, Any], read: ItemDocument | None = None
    ) -> dict[str, Any]:
        manifest = read_manifest(directory)[0] if read is None else read.manifest
        if manifest is not None:
            verify_files(directory, manifest["files"], str(directory / ITEM_MANIFEST))
        else:  # format version 1
            where = str(directory / ARRAYS_MANIFEST)
            _, listing = parse_document(read_item_file(directory, ARRAYS_MANIFEST), where)
            if listing.get("kind") != "arrays_manifest":
                raise MetadataCheckpointError(f"{where}: not a manifest.")
            verify_files(directory, listing.get("files"), where)
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
                values: dict[str, Any] = self._arrays.restore(
                    directory, args=ocp.args.PyTreeRestore(restore_args=restore_args)
                )
        except Exception as e:  # Orbax and tensorstore raise many types; report them alike
            unsharded = [name for name, (_, _, sharding) in requests.items() if sharding is None]
            note = missing_devices_note(self._arrays, directory, unsharded) if unsharded else ""
            raise MetadataCheckpointError(
                f"{directory}: Orbax could not restore the item's global arrays "
                f"({type(e).__name__}: {e}).{note}"
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
        read = read_item_document(directory, KIND, "MetadataRestore")
        check_document(read.doc, read.where)
        return describe_item(read.doc)

    def close(self) -> None:
        """Closes the handler used for global arrays."""
        if self._arrays_handler is not None:
            self._arrays_handler.close()


def _write_process(directory: epath.Path, encoded: EncodedItem, whole: bool) -> None:
    """Lays out this process's arrays and writes its blob (if any), hashed on another thread
    meanwhile (writes and sha256 release the GIL), then its document: the whole item's,
    tied to its step, where ``whole``."""
    doc, parts = encoded.finish(digest=False)
    index = doc["process_index"]
    if parts:
        digest = start_digest(parts, doc["blob"]["size"])
        path = directory / blob_file_name(index)
        if local_name(path) is None:
            write_bytes(path, b"".join(bytes(p) for p in parts))
        else:
            with open(path, "wb") as f:
                for part in parts:
                    f.write(part)
        doc["blob"] = digest.result()
    tie = whole_item_tie(directory) if whole else None
    write_document(directory / process_file_name(index), doc, tie=tie)


async def _write_process_async(directory: epath.Path, encoded: EncodedItem, whole: bool) -> None:
    _write_process(directory, encoded, whole)


def read_blob(directory: epath.Path, doc: dict[str, Any]) -> np.ndarray:
    """The blob of ``doc``'s process (``process_<i>.bin``), checked against ``doc``.

    Raises:
        MetadataCheckpointError: Missing, of another size, or of another sha256.
    """
    data, differs = _read_blob(epath.Path(directory), doc)
    _check_blob(epath.Path(directory), doc, differs.result())
    return data


def _read_blob(
    directory: epath.Path, doc: dict[str, Any]
) -> tuple[np.ndarray, concurrent.futures.Future[str | None]]:
    """This process's blob (of the size the document gives), and what differs from its
    digest, being computed: a blob in parts is hashed part by part as it is read."""
    check = BlobCheck(doc["blob"])
    name = blob_file_name(doc["process_index"])
    part_size = check.part_size()
    data = read_item_file(
        directory, name, size=doc["blob"]["size"], mutable=True,
        on_part=None if part_size is None else check.on_part, part_size=part_size,
    )  # fmt: skip
    return data, check.differs(data)


def _check_blob(directory: epath.Path, doc: dict[str, Any], differs: str | None) -> None:
    """Raises where the blob's digest is not the one the document gives."""
    if differs is not None:
        raise MetadataCheckpointError(
            f"{directory / blob_file_name(doc['process_index'])}: {differs} from the one in "
            f"{process_file_name(doc['process_index'])}: the file is damaged, or comes from "
            "another save. Restore an earlier step."
        )


@ocp.args.register_with_handler(MetadataCheckpointHandler, for_save=True)
@dataclasses.dataclass
class MetadataSave(ocp.args.CheckpointArgs):
    """Saves a pytree of :class:`~datarax.core.metadata.Metadata` (see
    :class:`MetadataCheckpointHandler`).

    Attributes:
        item: One ``Metadata``, or dicts, lists, tuples (or any pytree) of them; fields
            may be Python ints, NumPy or JAX arrays (for instance of shape ``[B]``, for a
            batch), typed or raw keys. It is checked when these args are built, so that
            an item that cannot be saved fails before Orbax starts; its values are taken
            (NumPy arrays and ``source_info`` copied, JAX arrays, which are immutable,
            referenced) when the handler's ``async_save`` starts, at the
            ``CheckpointManager.save`` call, however long after the args were built.

    Examples:
        >>> from datarax.core.metadata import Metadata
        >>> from datarax.checkpoint import MetadataSave
        >>> MetadataSave([Metadata(index=1), Metadata(index=2)]).item[1].index
        2
    """

    item: Any

    def __post_init__(self) -> None:
        # Check now, before Orbax starts the save: an error raised from inside Orbax's async
        # save would leave its directory-creation threads waiting.
        encode_item(self.item, copy=False)

    def take_snapshot(self) -> EncodedItem:
        """The item's values now (the handler calls this at its ``async_save`` entry)."""
        return encode_item(self.item)


@ocp.args.register_with_handler(MetadataCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class MetadataRestore(ocp.args.CheckpointArgs):
    """Restores a pytree of :class:`~datarax.core.metadata.Metadata`.

    Attributes:
        target: Optional pytree shaped like the saved item. Its containers are reused, each
            field must be held like the saved one (int, array of the same dtype and shape,
            key of the same impl), and array fields come back in the target leaf's
            container and sharding (a ``jax.ShapeDtypeStruct`` with a sharding will do;
            ``jax.eval_shape`` of the item too, its int fields restored as the ints saved).
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
