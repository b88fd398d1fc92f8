"""Self-checking files: every file the handlers write is verified before it is used.

A document file holds two lines: a header and the document, both JSON::

    {"format":"datarax.checkpoint","format_version":1,"sha256":"<hex>","size":<bytes>}
    {...the document...}

``sha256`` and ``size`` cover the exact bytes after the first newline, so a truncated,
extended or edited file is detected before its content is parsed. The header's layout is
the same in every format version, so a reader can always tell a newer format from damage.

Arrays that Orbax writes for the item (see :mod:`datarax.checkpoint.metadata_handler`) are
covered by a manifest document listing the size and sha256 of each of their files.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
from etils import epath

from datarax.checkpoint.errors import MetadataCheckpointError

FORMAT_NAME = "datarax.checkpoint"
FORMAT_VERSION = 1
"""The on-disk format this library writes; it reads this version and every older one."""

_HEADER_KEYS = {"format", "format_version", "sha256", "size"}


def process_file_name(index: int) -> str:
    """The name of the document that process ``index`` writes: ``process_<index>.jsonl``."""
    return f"process_{index}.jsonl"


def dumps_document(doc: dict[str, Any]) -> bytes:
    """Serialises ``doc`` as a header line and a document line (see the module docstring)."""
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def loads_document(data: bytes, name: str) -> dict[str, Any]:
    """Parses and verifies what :func:`dumps_document` wrote.

    Args:
        data: The file's bytes.
        name: The file, for error messages.

    Returns:
        The document.

    Raises:
        MetadataCheckpointError: A damaged file, a file of another kind, or a format
            version newer than :data:`FORMAT_VERSION`.
    """
    newline = data.find(b"\n")
    if newline < 0:
        raise _damaged(name, f"no header line (the file is {len(data)} bytes long)")
    try:
        header = json.loads(data[:newline])
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(name, f"the header line is not valid JSON ({e})") from e
    if type(header) is not dict or set(header) != _HEADER_KEYS:
        found = sorted(header) if type(header) is dict else header
        raise _damaged(name, f"the header holds {found!r}, expected keys {sorted(_HEADER_KEYS)}")
    if header["format"] != FORMAT_NAME:
        raise _damaged(name, f"its format is {header['format']!r}, expected {FORMAT_NAME!r}")
    version = header["format_version"]
    if type(version) is not int or version < 1:
        raise _damaged(name, f"format_version is {version!r}, expected a positive int")
    if version > FORMAT_VERSION:
        raise MetadataCheckpointError(
            f"{name}: written in datarax checkpoint format version {version}, newer than the "
            f"versions this datarax reads (up to {FORMAT_VERSION}). Upgrade datarax to restore it."
        )
    body = data[newline + 1 :]
    if len(body) != header["size"]:
        raise _damaged(
            name, f"the document is {len(body)} bytes, the header says {header['size']!r}"
        )
    digest = hashlib.sha256(body).hexdigest()
    if digest != header["sha256"]:
        raise _damaged(
            name, f"the document's sha256 is {digest}, the header says {header['sha256']!r}"
        )
    try:
        doc = json.loads(body)
    except ValueError as e:  # cannot happen past the checksum, unless the writer was broken
        raise _damaged(name, f"the document is not valid JSON ({e})") from e
    if type(doc) is not dict or doc.get("format_version") != version:
        raise _damaged(name, "the document does not repeat the header's format_version")
    return doc


def _damaged(name: str, what: str) -> MetadataCheckpointError:
    return MetadataCheckpointError(
        f"{name}: {what}. The checkpoint item is damaged or incomplete; restore an earlier "
        "step or save again."
    )


def _local(path: epath.Path | str) -> str | None:
    """``path`` as a local file name, or ``None`` for a remote path (``gs://...``)."""
    name = os.fspath(path)
    return None if "://" in name else name


def read_bytes(path: epath.Path | str) -> bytes:
    """Reads ``path``, reporting a missing or unreadable file as a checkpoint error."""
    local = _local(path)
    try:
        if local is not None:  # epath's own read costs three times a plain open()
            with open(local, "rb") as f:
                return f.read()
        return epath.Path(path).read_bytes()
    except FileNotFoundError as e:
        raise MetadataCheckpointError(
            f"{path}: missing. The checkpoint item is incomplete; restore an earlier step."
        ) from e
    except OSError as e:
        raise MetadataCheckpointError(f"{path}: cannot be read ({e}).") from e


def read_document(path: epath.Path | str) -> dict[str, Any]:
    """Reads and verifies one document file."""
    return loads_document(read_bytes(path), str(path))


def write_document(path: epath.Path, doc: dict[str, Any]) -> None:
    """Writes one document file."""
    data = dumps_document(doc)
    local = _local(path)
    if local is None:
        path.write_bytes(data)
        return
    with open(local, "wb") as f:
        f.write(data)


async def write_document_async(path: epath.Path, doc: dict[str, Any]) -> None:
    """:func:`write_document`, as the coroutine an Orbax commit future runs."""
    write_document(path, doc)


def process_header(kind: str) -> dict[str, Any]:
    """The fields every process document starts with."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
    }


def read_process_document(
    directory: epath.Path, kind: str, restore_with: str
) -> tuple[dict[str, Any], str]:
    """Reads this process's document of an item and checks that it is of ``kind`` and was
    saved by as many processes as this job runs.

    Args:
        directory: The item directory.
        kind: The ``kind`` the document must have.
        restore_with: What restores a document of ``kind``, for error messages.

    Returns:
        The document, and the file it was read from (for error messages).

    Raises:
        MetadataCheckpointError: The document is missing, damaged, of another kind, or saved
            by a different number of processes.
    """
    index, count = jax.process_index(), jax.process_count()
    # A plain string join: this runs on every restore, and epath's costs more than the read.
    path = os.path.join(os.fspath(directory), process_file_name(index))
    try:
        doc = read_document(path)
    except MetadataCheckpointError:
        directory = epath.Path(directory)
        if (directory / process_file_name(index)).exists():
            raise
        saved = sorted(p.name for p in directory.glob("process_*.jsonl"))
        if saved:
            raise MetadataCheckpointError(
                f"{path}: missing. The item holds the documents of {len(saved)} process(es) "
                f"({', '.join(saved[:4])}{', ...' if len(saved) > 4 else ''}) but this job "
                f"runs {count} process(es) and this is process {index}: restore with as many "
                "processes as saved the checkpoint."
            ) from None
        raise MetadataCheckpointError(
            f"{path}: missing. {directory} holds no datarax checkpoint item, or the item is "
            "incomplete; restore an earlier step."
        ) from None
    if doc.get("kind") != kind:
        raise MetadataCheckpointError(
            f"{path}: holds a {doc.get('kind')!r} item, not a {kind!r} item; restore it with "
            f"the args that match what was saved ({restore_with} restores {kind!r} items)."
        )
    if doc.get("process_count") != count:
        raise MetadataCheckpointError(
            f"{path}: saved by {doc.get('process_count')} process(es), restored by {count} "
            f"process(es). Restore with {doc.get('process_count')} processes: each process's "
            "state comes back to the process that saved it."
        )
    if doc.get("process_index") != index:
        raise _damaged(str(path), f"it says process {doc.get('process_index')}, not {index}")
    return doc, path


def hash_files(directory: epath.Path, exclude: set[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``directory`` (recursively), by relative path,
    except top-level names in ``exclude``."""
    directory = epath.Path(directory)
    listing = {}
    pending = [(directory, "")]
    while pending:  # epath has no rglob (it would be costly on cloud storage)
        folder, prefix = pending.pop()
        for path in folder.iterdir():
            rel = prefix + path.name
            if not prefix and rel in exclude:
                continue
            if path.is_dir():
                pending.append((path, rel + "/"))
                continue
            data = path.read_bytes()
            listing[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return dict(sorted(listing.items()))


def verify_files(directory: epath.Path, listing: Any, manifest: str) -> None:
    """Checks that every file in ``listing`` (from :func:`hash_files`) is unchanged.

    Raises:
        MetadataCheckpointError: A listed file is missing, unreadable or changed.
    """
    directory = epath.Path(directory)
    if type(listing) is not dict or not listing:
        raise _damaged(manifest, "its file listing is empty or malformed")
    for rel, entry in listing.items():
        path = directory / rel
        data = read_bytes(path)
        if type(entry) is not dict:
            raise _damaged(manifest, f"its entry for {rel} is malformed")
        if len(data) != entry.get("size"):
            raise _damaged(
                str(path), f"it is {len(data)} bytes, {manifest} lists {entry.get('size')!r}"
            )
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise _damaged(str(path), f"its sha256 differs from the one listed in {manifest}")
