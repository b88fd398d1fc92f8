"""Self-checking files: every file the handlers write is verified before it is used.

The pieces live in their own modules, gathered here for the handlers:

- :mod:`datarax.checkpoint.documents`: the two-line document file (a header line with
  format, version, sha256 and size, then the JSON document), and the ``save`` entry that
  ties a process document to its save and step;
- :mod:`datarax.checkpoint.safe_files`: reading only regular files inside the item, of a
  size checked before reading;
- :mod:`datarax.checkpoint.manifest`: ``item_manifest.jsonl``, which lists every file of an
  item once every process committed, and the restore's check of each document against it;
- :mod:`datarax.checkpoint.array_files`: the digests of the files Orbax writes for global
  arrays, listed in that manifest and checked before a restore reads them.
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath

from datarax.checkpoint.array_files import hash_files, verify_files
from datarax.checkpoint.documents import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_DOCUMENT_BYTES,
    MAX_HEADER_BYTES,
    blob_file_name,
    dumps_document,
    loads_document,
    parse_document,
    process_file_name,
    process_header,
    write_document,
)
from datarax.checkpoint.manifest import (
    ARRAYS_MANIFEST,
    ITEM_MANIFEST,
    ItemDocument,
    read_item_document,
    read_process_document,
    write_item_manifest,
)
from datarax.checkpoint.safe_files import read_item_file

__all__ = [
    "ARRAYS_MANIFEST", "FORMAT_NAME", "FORMAT_VERSION", "ITEM_MANIFEST", "MAX_DOCUMENT_BYTES",
    "ItemDocument", "blob_file_name", "dumps_document", "hash_files", "loads_document",
    "parse_document", "process_file_name", "process_header", "read_document",
    "read_item_document", "read_process_document", "verify_files", "write_document",
    "write_item_manifest",
]  # fmt: skip


def read_document(path: epath.Path | str) -> dict[str, Any]:
    """Reads and verifies one document file (a regular file of at most
    :data:`MAX_DOCUMENT_BYTES` plus its header line)."""
    name = os.fspath(path)
    directory, base = os.path.dirname(name), os.path.basename(name)
    data = read_item_file(directory, base, limit=MAX_DOCUMENT_BYTES + MAX_HEADER_BYTES + 1)
    return parse_document(data, name)[1]
