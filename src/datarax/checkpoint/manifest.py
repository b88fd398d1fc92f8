"""``item_manifest.jsonl``: every file of an item, tied to one save and one step.

Once every process has committed its files, the handler's ``finalize`` (which Orbax runs
on its primary process, after the ``async_write_complete`` barrier of all processes) writes
the manifest: the number of processes, the step, and for every file of the item its size
and sha256 (for a process document, the digest its header line gives; for a blob, the one
its document gives; for Orbax's global-array files, their own). A restore reads the
manifest first and refuses a document (or array file) that is not the one listed: a file
copied from another save, step or run. Saved by a ``CheckpointManager``, it also records
the step's start (``step_started``, see :mod:`~datarax.checkpoint.step_tie`), so a whole
item copied from another run's step of the same number is refused too. A format-version-2
item without a manifest never finished saving. Version 1 items have no manifest and
restore as before.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
from etils import epath

from datarax.checkpoint.array_files import check_entry, hash_files
from datarax.checkpoint.blob_digest import manifest_entry, valid_entry
from datarax.checkpoint.documents import (
    FORMAT_VERSION,
    MAX_DOCUMENT_BYTES,
    MAX_HEADER_BYTES,
    blob_file_name,
    damaged,
    dumps_document,
    local_name,
    parse_document,
    parse_header,
    process_file_name,
    step_of,
    write_bytes,
    written_header,
)
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.safe_files import check_relative, read_item_file
from datarax.checkpoint.step_tie import STEP_STARTED, check_step_started, step_started

ITEM_MANIFEST = "item_manifest.jsonl"
"""Written by ``finalize`` once every process committed (format version 2)."""
ARRAYS_MANIFEST = "arrays_manifest.jsonl"
"""Format version 1's listing of Orbax's global-array files."""
MANIFEST_KIND = "item_manifest"
_MANIFEST_KEYS = {"format_version", "kind", "process_count", "step", "documents", "blobs", "files"}
_OPTIONAL_KEYS = {STEP_STARTED}
_FILE_LIMIT = MAX_DOCUMENT_BYTES + MAX_HEADER_BYTES + 1


@dataclasses.dataclass
class ItemDocument:
    """What :func:`read_item_document` returns.

    Attributes:
        doc: The process document.
        where: The file it was read from, for error messages.
        manifest: The item's manifest (``None`` for a format version 1 item).
    """

    doc: dict[str, Any]
    where: str
    manifest: dict[str, Any] | None


def _header_of(directory: epath.Path, name: str) -> dict[str, Any]:
    line = read_item_file(directory, name, limit=_FILE_LIMIT, first=MAX_HEADER_BYTES + 1)
    newline = line.find(b"\n")
    path = os.path.join(os.fspath(directory), name)
    if newline < 0:
        raise damaged(path, "no header line in its first bytes")
    return parse_header(line[:newline], path)


def whole_item(global_arrays: bool = False) -> bool:
    """Whether an item saved now is its document alone (no manifest): saved by one process,
    without Orbax's files for global arrays. Both handlers' saves and ``finalize`` ask."""
    return not global_arrays and jax.process_count() == 1


def write_item_manifest(directory: epath.Path | str) -> None:
    """Writes ``item_manifest.jsonl`` for the item in ``directory`` (see the module docstring).

    Call it once every process has committed its files, on one process: the handlers'
    ``finalize`` does. Writing it twice writes the same content (atomically on local disks).

    Raises:
        MetadataCheckpointError: A process document is missing or damaged.
    """
    directory = epath.Path(directory)
    count = jax.process_count()
    documents, blobs = {}, {}
    for i in range(count):
        name = process_file_name(i)
        known = written_header(os.path.join(os.fspath(directory), name))
        if known is None:  # another process's document: its header line only is read
            header = _header_of(directory, name)
            known = {"size": header["size"], "sha256": header["sha256"]}
        documents[name] = known
    local = local_name(directory)
    names = set(os.listdir(local)) if local else {path.name for path in directory.iterdir()}
    for i in range(count):
        if blob_file_name(i) in names:  # its digest is in the document: no need to reread it
            path = os.path.join(os.fspath(directory), process_file_name(i))
            _, doc = parse_document(read_item_file(directory, process_file_name(i)), path)
            blob = doc.get("blob")
            if blob is None or not valid_entry(blob):
                raise damaged(path, "its 'blob' entry is malformed")
            blobs[blob_file_name(i)] = check_entry(manifest_entry(blob), path)
    files = hash_files(directory)
    manifest = {
        "format_version": FORMAT_VERSION, "kind": MANIFEST_KIND, "process_count": count,
        "step": step_of(directory), "documents": documents, "blobs": blobs, "files": files,
    }  # fmt: skip
    started = step_started(directory)
    if started is not None:
        manifest[STEP_STARTED] = started
    data = dumps_document(manifest)
    final = os.path.join(os.fspath(directory), ITEM_MANIFEST)
    if local is None:
        write_bytes(final, data)
        return
    temporary = f"{final}.tmp-{os.getpid()}"
    write_bytes(temporary, data)
    os.replace(temporary, final)


def read_manifest(directory: epath.Path | str) -> tuple[dict[str, Any] | None, str]:
    """The item's manifest, checked, or ``None`` where there is none; and its path."""
    path = os.path.join(os.fspath(directory), ITEM_MANIFEST)
    try:
        data = read_item_file(directory, ITEM_MANIFEST, limit=_FILE_LIMIT)
    except MetadataCheckpointError:
        if local_name(directory) is not None and not os.path.lexists(path):
            return None, path
        if local_name(directory) is None and not epath.Path(path).exists():
            return None, path
        raise
    _, manifest = parse_document(data, path)
    if not _MANIFEST_KEYS <= set(manifest) <= _MANIFEST_KEYS | _OPTIONAL_KEYS or (
        manifest["kind"] != MANIFEST_KIND
    ):
        raise damaged(path, f"not an item manifest (keys {sorted(manifest)[:10]})")
    count, step = manifest["process_count"], manifest["step"]
    step_ok = step is None or (type(step) is int and step >= 0)
    if type(count) is not int or count < 1 or not step_ok:
        raise damaged(path, "malformed process_count or step")
    for section in ("documents", "blobs", "files"):
        if type(manifest[section]) is not dict:
            raise damaged(path, f"malformed {section}")
        for rel, entry in manifest[section].items():
            check_relative(rel, path)
            check_entry(entry, path)
    check_step_started(directory, manifest, path)
    return manifest, path


def read_item_document(
    directory: epath.Path | str,
    kind: str,
    restore_with: str,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> ItemDocument:
    """Reads one process's document of an item, checked against the item's manifest.

    Args:
        directory: The item directory.
        kind: The ``kind`` the document must have (``Metadata``, ``MetadataManager``).
        restore_with: What restores a document of ``kind``, for error messages.
        process_index: The process whose document to read (default: this process).
        process_count: The number of processes the item must have been saved by
            (default: this job's).

    Raises:
        MetadataCheckpointError: The document or the manifest is missing or damaged, the
            document is not the one the manifest lists (a file from another save, step or
            run), the item was copied from another step, the document is of another kind,
            or saved by a different number of processes.
    """
    directory = os.fspath(directory)  # once: an epath.Path builds its string at every use
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    manifest, manifest_path = read_manifest(directory)
    name = process_file_name(index)
    path = os.path.join(os.fspath(directory), name)
    try:
        data = read_item_file(directory, name, limit=_FILE_LIMIT)
    except MetadataCheckpointError as e:
        raise _missing_document(directory, path, index, count, e) from None
    if manifest is not None and manifest["process_count"] != count:
        raise _count_mismatch(path, manifest["process_count"], count)
    header, doc = parse_document(data, path)
    if manifest is None:
        if header["format_version"] >= 2:
            if not _is_whole(doc):
                raise MetadataCheckpointError(
                    f"{manifest_path}: missing. An item of format version "
                    f"{header['format_version']} saved by several processes, or with Orbax's "
                    "array files, gets its manifest once every process has committed, so "
                    "this save never finished; restore an earlier step."
                )
            _check_whole(directory, doc, path)
    else:
        _check_tie(directory, doc, header, manifest, path, manifest_path)
    if doc.get("kind") != kind:
        raise MetadataCheckpointError(
            f"{path}: holds a {str(doc.get('kind'))[:40]!r} item, not a {kind!r} item; restore "
            f"it with the args that match what was saved ({restore_with} restores {kind!r} "
            "items)."
        )
    if doc.get("process_count") != count:
        raise _count_mismatch(path, doc.get("process_count"), count)
    if doc.get("process_index") != index:
        raise damaged(path, f"it says process {str(doc.get('process_index'))[:20]}, not {index}")
    return ItemDocument(doc, path, manifest)


def read_process_document(
    directory: epath.Path | str,
    kind: str,
    restore_with: str,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[dict[str, Any], str]:
    """``(document, file)`` of :func:`read_item_document`."""
    read = read_item_document(
        directory, kind, restore_with, process_index=process_index, process_count=process_count
    )
    return read.doc, read.where


def _count_mismatch(path: str, saved: Any, count: int) -> MetadataCheckpointError:
    return MetadataCheckpointError(
        f"{path}: saved by {str(saved)[:20]} process(es), restored by {count} process(es). "
        f"Restore with {str(saved)[:20]} processes: each process's state comes back to the "
        "process that saved it."
    )


def _missing_document(
    directory: epath.Path | str, path: str, index: int, count: int, error: MetadataCheckpointError
) -> MetadataCheckpointError:
    if "missing" not in str(error):
        return error
    saved = sorted(p.name for p in epath.Path(directory).glob("process_*.jsonl"))
    if saved:
        return MetadataCheckpointError(
            f"{path}: missing. The item holds the documents of {len(saved)} process(es) "
            f"({', '.join(saved[:4])}{', ...' if len(saved) > 4 else ''}) but this job "
            f"runs {count} process(es) and this is process {index}: restore with as many "
            "processes as saved the checkpoint."
        )
    return MetadataCheckpointError(
        f"{path}: missing. {directory} holds no datarax checkpoint item, or the item is "
        "incomplete; restore an earlier step."
    )


def _check_tie(
    directory: str,
    doc: dict[str, Any],
    header: dict[str, Any],
    manifest: dict[str, Any],
    path: str,
    manifest_path: str,
) -> None:
    """The document is the one the manifest lists, and the item is in its step's directory."""
    name = os.path.basename(path)
    listed = manifest["documents"].get(name)
    if listed != {"size": header["size"], "sha256": header["sha256"]}:
        raise MetadataCheckpointError(
            f"{path}: not the document {manifest_path} lists for it (its sha256 is "
            f"{header['sha256'][:16]}..., the manifest's "
            f"{str((listed or {}).get('sha256'))[:16]}...): the file comes from another save, "
            "step or run than the rest of the item. Restore an earlier step, or copy whole "
            "step directories only."
        )
    if header["format_version"] >= 2:
        whole = _is_whole(doc)
        save = _save_entry(
            doc, path, {"nonce", "step", STEP_STARTED} if whole else {"nonce", "step"}
        )
        if whole:  # a whole item's document, listed in a manifest written afterwards
            check_step_started(directory, save, path)
        if save["step"] != manifest["step"]:
            raise MetadataCheckpointError(
                f"{path}: saved at step {save['step']}, but {manifest_path} says step "
                f"{manifest['step']}: files from two saves are mixed in this item."
            )
    _check_step_directory(directory, manifest["step"], manifest_path, path)


def _save_entry(doc: dict[str, Any], path: str, keys: set[str]) -> dict[str, Any]:
    """The document's ``save`` entry, checked: ``keys``, a 32-hex nonce, an int or null step
    (and ``step_started``, where ``keys`` has it, an int or null)."""
    save = doc.get("save")
    if (
        type(save) is not dict
        or set(save) != keys
        or type(save["nonce"]) is not str
        or not re.fullmatch(r"[0-9a-f]{32}", save["nonce"])
        or not (save["step"] is None or type(save["step"]) is int)
        or not (save.get(STEP_STARTED) is None or type(save[STEP_STARTED]) is int)
    ):
        raise damaged(path, "its 'save' entry is missing or malformed")
    return save


def _check_step_directory(directory: str, step: int | None, tie_path: str, path: str) -> None:
    here = step_of(directory)
    if here is not None and step is not None and here != step:
        raise MetadataCheckpointError(
            f"{tie_path}: the item was saved at step {step}, but it is in the directory of "
            f"step {here} ({path}): it was copied from another step. Restore step {step} "
            "where it was saved, or an earlier step."
        )


def _is_whole(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` says it is its whole item (its ``save`` entry has ``step_started``):
    saved by one process, with no files but its own, and no manifest."""
    save = doc.get("save")
    return type(save) is dict and STEP_STARTED in save


def _check_whole(directory: str, doc: dict[str, Any], path: str) -> None:
    """A document that is its whole item: saved by one process, in the step it is in, and
    in that step's save (the ``step_started`` it records is the step's)."""
    save = _save_entry(doc, path, {"nonce", "step", STEP_STARTED})
    if doc.get("process_count") != 1:
        raise damaged(path, "a whole-item document of more than one process")
    _check_step_directory(directory, save["step"], path, path)
    check_step_started(directory, save, path)
