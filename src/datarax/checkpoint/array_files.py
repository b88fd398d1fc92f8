"""The files Orbax writes for an item's global arrays: listed with their digests at
finalize, checked before a restore reads them.

A ``jax.Array`` that is not fully addressable by one process (spread over the devices of
several processes) is saved by Orbax's array serialization (tensorstore, OCDBT), from every
process. Its files are not this format's, so ``item_manifest.jsonl`` lists them, each with
its size and sha256 (:func:`hash_files`, run by ``finalize``), and a restore checks them
against the listing (:func:`verify_files`) before Orbax reads them: a damaged byte, or a
file from another save, is an error naming the file, never a wrong value.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
from typing import Any

from etils import epath

from datarax.checkpoint.documents import SHA256_HEX, damaged, local_name
from datarax.checkpoint.safe_files import check_relative, open_item_file

_OURS = re.compile(r"process_\d+\.(jsonl|bin)|item_manifest\.jsonl(\.tmp-\d+)?|commit_success\.txt")
_CHUNK = 1 << 20


def check_entry(entry: Any, where: str) -> dict[str, Any]:
    """Returns ``entry`` if it is a file entry, ``{"size": int >= 0, "sha256": hex}``.

    Raises:
        MetadataCheckpointError: Anything else (naming ``where``, the file that held it).
    """
    if (
        type(entry) is not dict
        or set(entry) != {"size", "sha256"}
        or type(entry["size"]) is not int
        or entry["size"] < 0
        or type(entry["sha256"]) is not str
        or not SHA256_HEX.fullmatch(entry["sha256"])
    ):
        raise damaged(where, f"malformed file entry {str(entry)[:80]!r}")
    return entry


def hash_files(directory: epath.Path | str) -> dict[str, Any]:
    """Size and sha256 of every file under ``directory`` (recursively), by relative path,
    except this format's own files (documents, blobs, manifests) and Orbax's
    ``commit_success.txt``: the files Orbax wrote for the item's global arrays."""
    files = [
        (rel, path) for rel, path in _walk(directory) if not _OURS.fullmatch(rel.split("/", 1)[0])
    ]

    def entry(path: str) -> dict[str, Any]:
        local = local_name(path)
        with open(local, "rb", buffering=0) if local else epath.Path(path).open("rb") as f:
            size, digest = _sha256(f)
        return {"size": size, "sha256": digest}

    entries = _in_parallel(entry, [path for _, path in files])
    return dict(sorted(zip([rel for rel, _ in files], entries, strict=True)))


def _walk(directory: epath.Path | str) -> list[tuple[str, str]]:
    """``(relative path, path)`` of every file under ``directory``, recursively: through
    ``os.scandir`` on a local disk, through epath (which has no rglob: it would be costly on
    cloud storage) elsewhere."""
    root, found = os.fspath(directory), []
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        if local_name(folder) is None:
            listing = [(p.name, os.fspath(p), p.is_dir()) for p in epath.Path(folder).iterdir()]
        else:
            with os.scandir(folder) as entries:
                listing = [(e.name, e.path, e.is_dir()) for e in entries]
        for name, path, is_dir in listing:
            if is_dir:
                pending.append((path, f"{prefix}{name}/"))
            else:
                found.append((prefix + name, path))
    return found


def _sha256(f: Any) -> tuple[int, str]:
    """``(bytes read, their sha256)`` of an open file, read to its end a chunk at a time
    into one buffer (a file is never held whole: array files can be large, and every
    large new buffer on a fresh thread costs its page faults)."""
    digest, buffer = hashlib.sha256(), memoryview(bytearray(_CHUNK))
    size = 0
    while True:
        if hasattr(f, "readinto"):
            n = f.readinto(buffer)
            chunk = buffer[:n]
        else:  # a remote file object without readinto
            chunk = f.read(_CHUNK)
            n = len(chunk)
        if not n:
            return size, digest.hexdigest()
        digest.update(chunk)
        size += n


def _in_parallel(work: Any, items: list[Any]) -> list[Any]:
    """``[work(x) for x in items]``, on a few threads when there are several (reads and
    sha256 release the GIL); the first error, in order, is raised."""
    if len(items) < 2:
        return [work(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(min(8, len(items))) as pool:
        return list(pool.map(work, items))


def verify_files(directory: epath.Path | str, listing: Any, manifest: str) -> None:
    """Checks that every file in ``listing`` (from :func:`hash_files`) is unchanged: each
    path relative and inside the item, a regular file of the listed size and sha256 (read a
    chunk at a time, never whole).

    Raises:
        MetadataCheckpointError: A listed file is missing, unreadable, changed, or not a
            plain file inside the item.
    """
    if type(listing) is not dict or not listing:
        raise damaged(manifest, "its file listing is empty or malformed")
    for rel, entry in listing.items():  # every path checked before any file is opened
        check_relative(rel, manifest)
        check_entry(entry, manifest)

    def check(rel: str) -> None:
        path, actual, fd = open_item_file(directory, rel)
        with (
            os.fdopen(fd, "rb", buffering=0) if fd is not None else epath.Path(path).open("rb") as f
        ):
            if actual != listing[rel]["size"]:
                raise damaged(path, f"it is {actual} bytes, expected {listing[rel]['size']}")
            size, digest = _sha256(f)
        if size != actual:
            raise damaged(path, f"it changed size while being read ({size} of {actual} bytes)")
        if digest != listing[rel]["sha256"]:
            raise damaged(path, f"its sha256 differs from the one listed in {manifest}")

    _in_parallel(check, list(listing))
