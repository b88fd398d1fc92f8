"""Reading a datarax item's files for inspection and verification, from any one process.

Every read of an item's files by :mod:`datarax.checkpoint.inspection` goes through the few
functions here, and each performs the checks a restore performs (the header's format and
checksum, the document's kind, process index and process count), but for a process index
and count given by the caller instead of this job's: a single process can then check an item
that several processes saved. Nothing here writes.

:func:`read_item_document` reads through the restore's own reader,
``read_process_document(directory, kind, restore_with, process_index=, process_count=)``,
which also checks each document against the item's manifest (format version 2), so that
the command checks what a restore checks.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from etils import epath

from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.integrity import (
    FORMAT_NAME,
    process_file_name,
    read_document,
    read_process_document,
)

MANAGER_KIND = "MetadataManager"
METADATA_KIND = "Metadata"
RESTORE_WITH = {MANAGER_KIND: "MetadataManagerRestore", METADATA_KIND: "MetadataRestore"}
"""The datarax kinds, and the restore args of each."""

_PROCESS_FILE = re.compile(r"^process_(0|[1-9]\d*)\.jsonl$")
_HEADER_LIMIT = 4096  # a header line is under 200 bytes; more is not a datarax header


def saved_process_indices(directory: epath.Path) -> list[int]:
    """The process indices whose document files (``process_<i>.jsonl``) the item holds."""
    indices = []
    for path in epath.Path(directory).iterdir():
        match = _PROCESS_FILE.match(path.name)
        if match is not None:
            indices.append(int(match.group(1)))
    return sorted(indices)


def read_header(path: epath.Path) -> dict[str, Any] | None:
    """The parsed header line of a document file, or ``None`` if it has no datarax header.

    Only the file's first line is read (a local file is not read past 4 KiB), so that an
    item is recognised without reading its documents.
    """
    try:
        name = os.fspath(path)
        if "://" in name:
            head = epath.Path(path).read_bytes()[:_HEADER_LIMIT]
        elif not stat.S_ISREG(os.lstat(name).st_mode):
            return None  # never open a FIFO or a device, nor follow a link out of the item
        else:
            with open(name, "rb") as f:
                head = f.read(_HEADER_LIMIT)
    except OSError:
        return None
    line = head.split(b"\n", 1)[0]
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if type(header) is not dict or header.get("format") != FORMAT_NAME:
        return None
    return header


def is_datarax_item(directory: epath.Path) -> bool:
    """Whether ``directory`` holds a process document with a datarax header."""
    return any(
        read_header(epath.Path(directory) / process_file_name(i)) is not None
        for i in saved_process_indices(directory)
    )


def peek_document(directory: epath.Path, process_index: int) -> tuple[dict[str, Any], str]:
    """Process ``process_index``'s document, verified against its header but not checked for
    kind or process count: what tells which kind of item this is and how many processes
    saved it.

    Raises:
        MetadataCheckpointError: The file is missing, damaged or of a newer format.
    """
    path = os.path.join(os.fspath(directory), process_file_name(process_index))
    if "://" not in path:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None  # read_document reports it
        except OSError as e:
            raise MetadataCheckpointError(f"{path}: cannot be read ({e}).") from e
        if mode is not None and not stat.S_ISREG(mode):
            raise MetadataCheckpointError(
                f"{path}: not a regular file (a link, FIFO or device); a datarax item holds "
                "only the regular files its handler wrote. The checkpoint item is damaged."
            )
    return read_document(path), path


def read_item_document(
    directory: epath.Path, kind: str, *, process_index: int, process_count: int
) -> tuple[dict[str, Any], str]:
    """Process ``process_index``'s document of an item saved by ``process_count`` processes,
    checked as the handler's restore checks it on that process of such a job.

    Args:
        directory: The item directory.
        kind: The kind the document must have (``MetadataManager`` or ``Metadata``).
        process_index: The process whose document to read.
        process_count: The number of processes that saved the item.

    Returns:
        The document, and the file it was read from.

    Raises:
        MetadataCheckpointError: The document is missing, damaged, of another kind, or says
            another process index or count.
    """
    return read_process_document(
        directory,
        kind,
        RESTORE_WITH.get(kind, kind),
        process_index=process_index,
        process_count=process_count,
    )
