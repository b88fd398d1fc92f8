"""Reading the files of an item, and only those: hostile names and file types are refused.

A restore opens only paths that are relative, normalised and inside the item directory
(never ``..``, an absolute path or an empty component), and only regular files: every
component is checked with ``lstat`` before anything is opened, so a FIFO, a device or a
symlink (even one pointing inside the item) is an error, never read, waited on or
followed. Sizes are checked from ``stat`` before reading, and error messages only ever
mention files inside the item.
"""

from __future__ import annotations

import mmap
import os
import posixpath
import stat
from collections.abc import Callable
from typing import Any, Literal, overload

import numpy as np
from etils import epath

from datarax.checkpoint.documents import damaged, local_name
from datarax.checkpoint.errors import MetadataCheckpointError

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def check_relative(rel: Any, listed_in: str) -> str:
    """Returns ``rel`` if it names a file inside an item: a relative, normalised POSIX path.

    Raises:
        MetadataCheckpointError: Anything else (naming ``listed_in``, the file that held it).

    Examples:
        >>> from datarax.checkpoint.safe_files import check_relative
        >>> check_relative("d/0a1b", "item_manifest.jsonl")
        'd/0a1b'
        >>> check_relative("../etc/passwd", "item_manifest.jsonl")
        Traceback (most recent call last):
        ...
        datarax.checkpoint.MetadataCheckpointError: item_manifest.jsonl: lists the path \
'../etc/passwd', which is not a relative, normalised path inside the item. The checkpoint \
item is damaged or incomplete; restore an earlier step or save again.
    """
    ok = (
        type(rel) is str
        and 0 < len(rel) <= 1024
        and "\\" not in rel
        and "\x00" not in rel
        and not rel.startswith("/")
        and posixpath.normpath(rel) == rel
        and not any(part in ("", ".", "..") for part in rel.split("/"))
    )
    if not ok:
        raise damaged(
            listed_in,
            f"lists the path {str(rel)[:80]!r}, which is not a relative, normalised path "
            "inside the item",
        )
    return str(rel)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):  # fmt: skip
        if test(mode):
            return f"a {name}"
    return "not a regular file"


def _missing(path: str) -> MetadataCheckpointError:
    return MetadataCheckpointError(
        f"{path}: missing. The checkpoint item is incomplete; restore an earlier step."
    )


def _check_size(path: str, size: int, limit: int | None, expected: int | None) -> None:
    if limit is not None and size > limit:
        raise damaged(path, f"it is {size} bytes, more than the {limit} bytes a restore reads")
    if expected is not None and size != expected:
        raise damaged(path, f"it is {size} bytes, expected {expected}")


def open_item_file(directory: epath.Path | str, rel: str) -> tuple[str, int, int | None]:
    """Checks every component of ``directory/rel`` with ``lstat`` and opens the file.

    Returns:
        ``(path, size, fd)``; ``fd`` is ``None`` for a remote path (object stores have no
        symlinks or FIFOs), read it with :func:`read_item_file`.

    Raises:
        MetadataCheckpointError: Missing, not a regular file, or a component that is not
            a directory.
    """
    root = os.fspath(directory)
    path = posixpath.join(root, rel)
    local = local_name(root)
    if local is None:
        try:
            return path, epath.Path(path).stat().length, None
        except FileNotFoundError as e:
            raise _missing(path) from e
    current = local
    parts = rel.split("/")
    try:
        for i, part in enumerate(parts):
            current = os.path.join(current, part)
            mode = os.lstat(current).st_mode
            last = i == len(parts) - 1
            if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
                raise damaged(current, f"it is {_kind(mode)}; an item holds only regular files")
        fd = os.open(current, _OPEN_FLAGS)
    except FileNotFoundError as e:
        raise _missing(path) from e
    except OSError as e:
        raise MetadataCheckpointError(f"{path}: cannot be read ({e.strerror}).") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between the lstat and the open
        os.close(fd)
        raise damaged(path, f"it is {_kind(st.st_mode)}; an item holds only regular files")
    return path, st.st_size, fd


@overload
def read_item_file(
    directory: epath.Path | str,
    rel: str,
    *,
    limit: int | None = ...,
    size: int | None = ...,
    first: int | None = ...,
    mutable: Literal[True],
    on_part: Callable[[memoryview], object] | None = ...,
    part_size: int | None = ...,
) -> np.ndarray: ...
@overload
def read_item_file(
    directory: epath.Path | str,
    rel: str,
    *,
    limit: int | None = ...,
    size: int | None = ...,
    first: int | None = ...,
    mutable: Literal[False] = ...,
    on_part: None = ...,
    part_size: None = ...,
) -> bytes: ...
def read_item_file(
    directory: epath.Path | str,
    rel: str,
    *,
    limit: int | None = None,
    size: int | None = None,
    first: int | None = None,
    mutable: bool = False,
    on_part: Callable[[memoryview], object] | None = None,
    part_size: int | None = None,
) -> bytes | np.ndarray:
    """Reads the regular file ``rel`` of an item (see the module docstring).

    Args:
        directory: The item directory.
        rel: The file, relative to ``directory`` (checked with :func:`check_relative`
            by the caller when it comes from a file).
        limit: The largest size accepted, checked before reading.
        size: The exact size expected, checked before reading.
        first: Read at most this many bytes (a header line).
        mutable: Return a NumPy ``uint8`` array (arrays built on it are writeable, with no
            copy), read into memory that is not written first (see :func:`_new_buffer`).
        on_part: With ``mutable``, called with each part of ``part_size`` bytes of the
            array as soon as it is read, in order: digests computed on other threads
            meanwhile are done soon after the read.
        part_size: The size of the parts handed to ``on_part``.

    Raises:
        MetadataCheckpointError: Missing, not a regular file, or of the wrong size.
    """
    path, actual, fd = open_item_file(directory, rel)
    data: bytes | np.ndarray
    try:
        _check_size(path, actual, limit, size)
        if fd is None:
            n = -1 if first is None else first
            with epath.Path(path).open("rb") as remote:
                raw: bytes = remote.read(n)  # type: ignore[assignment]  # etils: IO[str] in any mode
            data = np.frombuffer(bytearray(raw), np.uint8) if mutable else raw
            if on_part is not None:
                step = part_size or len(raw) or 1
                for start in range(0, len(raw), step):
                    on_part(memoryview(raw)[start : start + step])
        else:
            parts = None if on_part is None else (on_part, part_size or actual)
            data = _read_array(fd, actual, parts) if mutable else _read_fd(fd, actual, first)
    except OSError as e:
        raise MetadataCheckpointError(f"{path}: cannot be read ({e}).") from e
    finally:
        if fd is not None:
            os.close(fd)
    if first is None and len(data) != actual:
        raise damaged(path, f"it changed size while being read ({len(data)} of {actual} bytes)")
    return data


_MAPPED = 4 << 20


def _new_buffer(size: int) -> np.ndarray:
    """A writeable ``uint8`` array of ``size`` bytes to read into (not zeroed where large).

    From ``size`` = 4 MiB, anonymous memory mapped with its pages made at once
    (``MAP_POPULATE``), not ``np.empty``: NumPy asks the kernel for huge pages for arrays of
    4 MiB and more (``madvise``), and where the kernel must first compact memory to find
    them, a read into a new 64 MiB array measured 145 ms here, against 22 ms mapped.
    """
    if size >= _MAPPED and hasattr(mmap, "MAP_POPULATE"):
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        return np.frombuffer(mmap.mmap(-1, size, flags=flags), np.uint8)
    return np.empty(size, np.uint8)


def _read_array(
    fd: int, actual: int, parts: tuple[Callable[[memoryview], object], int] | None
) -> bytes | np.ndarray:
    """Reads a file of ``actual`` bytes (its ``fstat`` size) from ``fd`` into a new array,
    handing each part to ``parts = (on_part, part_size)`` as soon as it is read, where
    given; a file that shrank since is returned empty, for the caller to report."""
    data = _new_buffer(actual)
    view, got = data.data, 0
    on_part, step = parts if parts is not None else (None, actual)
    while got < actual:
        start, end = got, min(actual, got + step)
        while got < end:
            n = os.readv(fd, [view[got:end]])
            if n == 0:
                return b""  # shorter than it was: reported by the caller
            got += n
        if on_part is not None:
            on_part(view[start:got])
    return data


def _read_fd(fd: int, actual: int, first: int | None) -> bytes:
    """Reads a file of ``actual`` bytes (its ``fstat`` size) from ``fd`` in as few system
    calls as it takes, usually one: a file that grew since is read one byte longer, a file
    that shrank shorter, so that the caller reports either."""
    want = actual + 1 if first is None else first
    parts = [os.read(fd, want)]
    got = len(parts[0])
    while got < min(want, actual) and parts[-1]:  # a read of over 2 GiB comes in pieces
        parts.append(os.read(fd, want - got))
        got += len(parts[-1])
    return parts[0] if len(parts) == 1 else b"".join(parts)
