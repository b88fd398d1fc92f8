"""Self-checking document files: a header line, then the JSON document it vouches for.

A document file holds two lines, both JSON::

    {"format":"datarax.checkpoint","format_version":2,"sha256":"<hex>","size":<bytes>}
    {...the document...}

``sha256`` and ``size`` cover the exact bytes after the first newline, so a truncated,
extended or edited file is detected before its content is parsed. The header's layout is
the same in every format version, so a reader can always tell a newer format from damage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from typing import Any

import jax
from etils import epath

from datarax.checkpoint.errors import MetadataCheckpointError

FORMAT_NAME = "datarax.checkpoint"
FORMAT_VERSION = 2
"""The on-disk format this library writes; it reads this version and every older one."""

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
"""The largest document (the line after the header) a restore reads: 64 MiB. The file's
size is checked before it is read, so a crafted huge file cannot exhaust memory."""

MAX_HEADER_BYTES = 4096
"""The longest header line a restore accepts."""

_HEADER_KEYS = {"format", "format_version", "sha256", "size"}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
"""A sha256 digest as this format writes it: 64 lowercase hex digits."""
# Orbax names a step directory ``<step>``, ``<prefix>_<step>`` (zero-padded or not), with
# ``.orbax-checkpoint-tmp[-<n>]`` appended while the step is being written.
_STEP_DIR = re.compile(r"(?:[^.]*_)?(\d+)(?:\.orbax-checkpoint-tmp(?:-\d+)?)?")


def process_file_name(index: int) -> str:
    """The name of the document that process ``index`` writes: ``process_<index>.jsonl``."""
    return f"process_{index}.jsonl"


def blob_file_name(index: int) -> str:
    """The name of the binary file of process ``index``'s host arrays: ``process_<index>.bin``."""
    return f"process_{index}.bin"


def dumps_document(doc: dict[str, Any]) -> bytes:
    """Serialises ``doc`` as a header line and a document line (see the module docstring)."""
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
    }
    return _header_line(header) + b"\n" + body


def _header_line(header: dict[str, Any]) -> bytes:
    """The header line :func:`dumps_document` writes for ``header`` (without its newline):
    its keys in this order, no spaces (the same bytes as ``json.dumps`` with compact
    separators, built directly: a restore rebuilds it to compare)."""
    return (
        f'{{"format":"{FORMAT_NAME}","format_version":{header["format_version"]},'
        f'"sha256":"{header["sha256"]}","size":{header["size"]}}}'
    ).encode()


def parse_header(line: bytes | bytearray, name: str) -> dict[str, Any]:
    """Parses and checks a header line (without its newline).

    Raises:
        MetadataCheckpointError: Not a header, or a format version newer than
            :data:`FORMAT_VERSION`.
    """
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise damaged(name, "the header line is not valid JSON") from e
    if type(header) is not dict or set(header) != _HEADER_KEYS:
        found = sorted(header) if type(header) is dict else type(header).__name__
        raise damaged(name, f"the header holds {found!r}, expected keys {sorted(_HEADER_KEYS)}")
    if header["format"] != FORMAT_NAME:
        raise damaged(name, f"its format is {str(header['format'])[:40]!r}, not {FORMAT_NAME!r}")
    version = header["format_version"]
    if type(version) is not int or version < 1:
        raise damaged(name, f"format_version is {str(version)[:20]!r}, expected a positive int")
    if version > FORMAT_VERSION:
        raise MetadataCheckpointError(
            f"{name}: written in datarax checkpoint format version {version}, newer than the "
            f"versions this datarax reads (up to {FORMAT_VERSION}). Upgrade datarax to restore it."
        )
    size, digest = header["size"], header["sha256"]
    if type(size) is not int or not 0 <= size <= MAX_DOCUMENT_BYTES:
        raise damaged(
            name, f"the header gives a size of {str(size)[:20]}, expected 0 to "
            f"{MAX_DOCUMENT_BYTES} (MAX_DOCUMENT_BYTES)"
        )  # fmt: skip
    if type(digest) is not str or not SHA256_HEX.fullmatch(digest):
        raise damaged(name, "the header's sha256 is not 64 lowercase hex digits")
    if _header_line(header) != line:  # JSON reads a header with a byte added as the same
        raise damaged(name, "the header line is not byte for byte the one this format writes")
    return header


def parse_document(data: bytes | bytearray, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parses and verifies what :func:`dumps_document` wrote: ``(header, document)``.

    Raises:
        MetadataCheckpointError: A damaged file, a file of another kind, or a format
            version newer than :data:`FORMAT_VERSION`.
    """
    newline = data.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if newline < 0:
        raise damaged(name, "no header line in its first bytes")
    header = parse_header(data[:newline], name)
    body = memoryview(data)[newline + 1 :]  # not copied: hashed, then decoded once
    if len(body) != header["size"]:
        raise damaged(name, f"the document is {len(body)} bytes, the header says {header['size']}")
    digest = hashlib.sha256(body).hexdigest()
    if digest != header["sha256"]:
        raise damaged(name, f"the document's sha256 is {digest}, not the header's")
    try:
        doc = json.loads(str(body, "ascii"))  # written with ensure_ascii, in every version
    except RecursionError as e:
        raise damaged(name, "the document is nested too deeply to be a datarax document") from e
    except ValueError as e:  # cannot happen past the checksum, unless the writer was broken
        raise damaged(name, f"the document is not ASCII JSON ({str(e)[:80]})") from e
    version = doc.get("format_version") if type(doc) is dict else None
    if type(version) is not int or version != header["format_version"]:
        raise damaged(name, "the document does not repeat the header's format_version")
    return header, doc


def loads_document(data: bytes, name: str) -> dict[str, Any]:
    """The document of :func:`parse_document`."""
    return parse_document(data, name)[1]


def damaged(name: str, what: str) -> MetadataCheckpointError:
    """The error for a file that is not what this format writes."""
    return MetadataCheckpointError(
        f"{name}: {what}. The checkpoint item is damaged or incomplete; restore an earlier "
        "step or save again."
    )


def local_name(path: epath.Path | str) -> str | None:
    """``path`` as a local file name, or ``None`` for a remote path (``gs://...``)."""
    name = os.fspath(path)
    return None if "://" in name else name


def write_bytes(path: epath.Path | str, data: bytes) -> None:
    """Writes ``data`` to ``path`` (a plain ``open`` for local files: epath's costs more)."""
    local = local_name(path)
    if local is None:
        epath.Path(path).write_bytes(data)
        return
    with open(local, "wb") as f:
        f.write(data)


_WRITTEN: dict[str, dict[str, Any]] = {}
_WRITTEN_LOCK = threading.Lock()
_WRITTEN_KEPT = 256


def write_document(
    path: epath.Path | str, doc: dict[str, Any], *, tie: dict[str, Any] | None = None
) -> None:
    """Writes one document file. A process document (one with a ``process_index``) without
    a ``save`` entry gets one (see :func:`save_stamp`), naming this save and its step; its
    size and sha256 are remembered for :func:`written_header` (the manifest needs them).

    Args:
        path: The file to write.
        doc: The document.
        tie: For a document that is its whole item (no manifest will list it), what its
            ``save`` entry adds to tie it to its step (see
            :func:`~datarax.checkpoint.step_tie.whole_item_tie`).
    """
    if "process_index" in doc and "save" not in doc:
        doc = stamp(doc, epath.Path(path).parent, tie)
    data = dumps_document(doc)
    write_bytes(path, data)
    if "process_index" in doc and tie is None:
        header = json.loads(data[: data.index(b"\n")])
        with _WRITTEN_LOCK:
            if len(_WRITTEN) >= _WRITTEN_KEPT:  # saves that never finalized
                _WRITTEN.pop(next(iter(_WRITTEN)))
            _WRITTEN[os.fspath(path)] = {"size": header["size"], "sha256": header["sha256"]}


def written_header(path: epath.Path | str) -> dict[str, Any] | None:
    """``{"size", "sha256"}`` of the document this process wrote at ``path`` (forgotten once
    asked for), or ``None``: then read it from the file."""
    with _WRITTEN_LOCK:
        return _WRITTEN.pop(os.fspath(path), None)


def process_header(kind: str) -> dict[str, Any]:
    """The fields every process document starts with."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
    }


def step_of(item_directory: epath.Path | str) -> int | None:
    """The Orbax step an item directory belongs to, from its parent's name (``5``,
    ``step_5``, ``5.orbax-checkpoint-tmp``), or ``None`` where the name is not a step's.

    Examples:
        >>> from datarax.checkpoint.documents import step_of
        >>> step_of("/ckpt/step_00012.orbax-checkpoint-tmp/data"), step_of("/tmp/x/data")
        (12, None)
    """
    parent = os.path.basename(os.path.dirname(os.fspath(item_directory).rstrip("/")))
    match = _STEP_DIR.fullmatch(parent)
    return int(match.group(1)) if match else None


def save_stamp(item_directory: epath.Path | str) -> dict[str, Any]:
    """``{"nonce": <32 hex, random>, "step": <Orbax step or None>}``: ties a process
    document to one save call and to its step."""
    return {"nonce": secrets.token_hex(16), "step": step_of(item_directory)}


def stamp(
    doc: dict[str, Any], item_directory: epath.Path | str, tie: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``doc`` with a ``save`` entry (placed after the process header fields), to which
    ``tie`` (a whole item's) is added."""
    save = save_stamp(item_directory) if tie is None else {**save_stamp(item_directory), **tie}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out[key] = value
        if key == "process_count":
            out["save"] = save
    if "save" not in out:
        out["save"] = save
    return out
