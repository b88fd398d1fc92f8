"""The digest of a process's blob (``process_<i>.bin``), computed on two threads.

A blob of at most :data:`PART_SIZE` bytes has one sha256, ``{"size", "sha256"}``. A larger
one has one sha256 per part of ``part_size`` bytes (the last one shorter),
``{"size", "part_size", "part_sha256": [...]}``: its parts are hashed by two threads while
it is written, and as a restore reads it, each part as soon as it is read. One sha256 of
64 MiB takes 31 ms on one core; in a restore it was the last thing to finish, 30 ms after
the read. Blobs written before parts existed (one sha256 of any size) restore as before.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

PART_SIZE = 8 << 20
"""The part size this library writes (a blob of more than this many bytes has parts)."""
_PART_SIZES = range(1 << 20, (1 << 30) + 1)
"""The part sizes a restore accepts: no crafted document makes a restore hash tiny parts."""

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def hash_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The two threads that hash blobs while they are written, read or decoded."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="datarax_hash")
    return _pool


def _sha256(pieces: list[Any]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


def _windows(layout: list[Any], size: int) -> Iterator[list[memoryview]]:
    """The pieces of ``layout`` (buffers written back to back) in each part of ``size``."""
    window: list[memoryview] = []
    room = size
    for buffer in layout:
        view = memoryview(buffer).cast("B")
        while len(view):
            piece, view = view[:room], view[room:]
            window.append(piece)
            room -= len(piece)
            if room == 0:
                yield window
                window, room = [], size
    if window:
        yield window


def start_digest(layout: list[Any], size: int) -> concurrent.futures.Future[dict[str, Any]]:
    """The blob entry of ``layout`` (buffers written back to back, ``size`` bytes in all),
    being computed on the hash threads.

    Examples:
        >>> from datarax.checkpoint.blob_digest import start_digest
        >>> start_digest([b"ab", b"c"], 3).result()["sha256"][:16]
        'ba7816bf8f01cfea'
        >>> entry = start_digest([bytes(9 << 20)], 9 << 20).result()
        >>> entry["part_size"], len(entry["part_sha256"])
        (8388608, 2)
    """
    pool = hash_pool()
    if size <= PART_SIZE:
        single = pool.submit(_sha256, layout)
        return when_all([single], lambda: {"size": size, "sha256": single.result()})
    parts = [pool.submit(_sha256, window) for window in _windows(layout, PART_SIZE)]
    return when_all(
        parts,
        lambda: {"size": size, "part_size": PART_SIZE, "part_sha256": [p.result() for p in parts]},
    )


def when_all(
    futures: list[concurrent.futures.Future[Any]], make: Callable[[], T]
) -> concurrent.futures.Future[T]:
    """A future of ``make()``, called once every one of ``futures`` is done (holding its
    error where it raises: a failed part raises there)."""
    out: concurrent.futures.Future[T] = concurrent.futures.Future()
    remaining, lock = [len(futures)], threading.Lock()

    def settle() -> None:
        try:
            out.set_result(make())
        except BaseException as e:  # handed to whoever waits for the digest
            out.set_exception(e)

    def one_done(_: concurrent.futures.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            settle()

    if not futures:
        settle()
    for future in futures:
        future.add_done_callback(one_done)
    return out


def valid_entry(blob: Any) -> bool:
    """Whether ``blob`` is a blob entry this format writes (of either form)."""
    if type(blob) is not dict or type(blob.get("size")) is not int or blob["size"] < 0:
        return False
    if set(blob) == {"size", "sha256"}:
        return type(blob["sha256"]) is str
    if set(blob) != {"size", "part_size", "part_sha256"}:
        return False
    size, part, digests = blob["size"], blob["part_size"], blob["part_sha256"]
    return (
        type(part) is int
        and part in _PART_SIZES
        and type(digests) is list
        and len(digests) == -(-size // part)
        and all(type(d) is str for d in digests)
    )


def manifest_entry(blob: dict[str, Any]) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a blob entry, as an item manifest lists it: for parts, the
    sha256 of their digests (joined, in order)."""
    if "sha256" in blob:
        return {"size": blob["size"], "sha256": blob["sha256"]}
    joined = "".join(blob["part_sha256"]).encode("ascii")
    return {"size": blob["size"], "sha256": hashlib.sha256(joined).hexdigest()}


class BlobCheck:
    """Hashes a blob being read, as its entry says: each part as soon as it is read (give
    :meth:`on_part` to the reader, with :meth:`part_size`), or the whole once read.

    Examples:
        >>> from datarax.checkpoint.blob_digest import BlobCheck, start_digest
        >>> data = bytes(range(256)) * (40 << 12)
        >>> entry = start_digest([data], len(data)).result()
        >>> check = BlobCheck(entry)
        >>> for i in range(0, len(data), check.part_size()):
        ...     check.on_part(memoryview(data)[i : i + check.part_size()])
        >>> check.differs(data).result() is None
        True
    """

    def __init__(self, entry: dict[str, Any]) -> None:
        self._entry = entry
        self._parts: list[concurrent.futures.Future[str]] = []

    def part_size(self) -> int | None:
        """The size of the parts to hand to :meth:`on_part`, or ``None`` (one digest)."""
        size: int | None = self._entry.get("part_size")
        return size

    def on_part(self, view: memoryview) -> None:
        """Starts hashing the next part (called by the reader, in order)."""
        self._parts.append(hash_pool().submit(_sha256, [view]))

    def differs(self, data: Any) -> concurrent.futures.Future[str | None]:
        """Once the whole blob is read into ``data``: what differs from the entry (``None``
        for nothing), being computed. A small blob is hashed now, on this thread."""
        if "part_sha256" in self._entry:
            return when_all(self._parts, self._compare_parts)
        if len(data) < 1 << 20:
            return when_all([], lambda: self._compare_whole(_sha256([data])))
        whole = hash_pool().submit(_sha256, [data])
        return when_all([whole], lambda: self._compare_whole(whole.result()))

    def _compare_whole(self, digest: str) -> str | None:
        return None if digest == self._entry["sha256"] else "its sha256 differs"

    def _compare_parts(self) -> str | None:
        digests = [p.result() for p in self._parts]
        expected, size = self._entry["part_sha256"], self._entry["part_size"]
        for i, (got, want) in enumerate(zip(digests, expected, strict=False)):
            if got != want:
                last = min(self._entry["size"], (i + 1) * size) - 1
                return f"its sha256 differs in bytes {i * size} to {last}"
        if len(digests) != len(expected):
            return f"its sha256 differs (it has {len(digests)} parts, not {len(expected)})"
        return None
