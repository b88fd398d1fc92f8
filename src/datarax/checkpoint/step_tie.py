"""Ties an item to the Orbax step it was saved in, so a whole item copied from another run
at the same step number is refused.

The item manifest ties every file of an item to one save, and ``step_of`` ties the item to
its step number; neither can tell a whole item copied from another run's step of the same
number, which is consistent in itself. Orbax gives each step it saves a
``_CHECKPOINT_METADATA`` file holding ``init_timestamp_nsecs``, the instant that step's
save started (written when the step's temporary directory is created, before any item's
``finalize``). The manifest records it as ``step_started``, and a restore of an item in a
step directory checks that the step beside it says the same.

An item saved by one process whose arrays are all in its own files has no manifest: its
document is the whole item, written last, and its ``save`` entry carries ``step_started``
itself (:func:`whole_item_tie`), which a restore checks with :func:`check_step_started`
as it checks a manifest's.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from etils import epath

from datarax.checkpoint.documents import local_name, step_of
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.safe_files import read_item_file

STEP_METADATA = "_CHECKPOINT_METADATA"
"""Orbax's metadata file of a step, beside the step's items."""
STEP_STARTED = "step_started"
"""The optional manifest key holding the step's ``init_timestamp_nsecs``."""
_LIMIT = 1 << 20
_ATTEMPTS = 100
_ORBAX_TMP = ".orbax-checkpoint-tmp"
_WAIT_S = 2.0


def _parent(directory: epath.Path | str) -> str:
    name = os.fspath(directory).rstrip("/")
    return name.rsplit("/", 1)[0] if "://" in name else os.path.dirname(name)


def step_started(directory: epath.Path | str, *, wait: bool = False) -> int | None:
    """``init_timestamp_nsecs`` of the step the item ``directory`` is in, or ``None`` where
    its parent has no readable ``_CHECKPOINT_METADATA`` holding one (an item saved outside
    a ``CheckpointManager``). Orbax rewrites that file in place (truncating it first) from
    its metadata thread, even while items are finalized: a file that does not parse is read
    again, for up to a second. With ``wait``, in a step directory Orbax is still writing
    (``<step>.orbax-checkpoint-tmp``, or any step directory on object storage), a missing
    file is waited for too, for up to two seconds: an async ``CheckpointManager`` writes it
    from another thread, possibly after the item's own writes start.

    Examples:
        >>> import json, pathlib, tempfile
        >>> from datarax.checkpoint.step_tie import step_started
        >>> step = pathlib.Path(tempfile.mkdtemp()) / "3"
        >>> (step / "data").mkdir(parents=True)
        >>> step_started(step / "data") is None
        True
        >>> _ = (step / "_CHECKPOINT_METADATA").write_text(json.dumps(
        ...     {"init_timestamp_nsecs": 1700000000123456789}))
        >>> step_started(step / "data")
        1700000000123456789
    """
    parent = _parent(directory)
    # Orbax is still writing a local step with a temporary name; on object storage a step
    # has its own name throughout the save.
    remote_step = local_name(parent) is None and step_of(directory) is not None
    writing = _ORBAX_TMP in parent or remote_step
    deadline = time.monotonic() + _WAIT_S if wait and writing else 0.0
    for _ in range(_ATTEMPTS):
        data = _read_or_wait(parent, deadline)
        if data is None:
            return None
        try:
            metadata = json.loads(data)
        except ValueError:  # Orbax rewrites the file in place, from another thread
            time.sleep(0.01)
            continue
        except RecursionError:
            return None
        started = metadata.get("init_timestamp_nsecs") if type(metadata) is dict else None
        return started if type(started) is int else None
    return None


def _read_or_wait(parent: str, deadline: float) -> bytes | None:
    """``parent``'s ``_CHECKPOINT_METADATA``, or ``None`` where it is missing (or not a
    regular file, or unreadable) and still is at ``deadline``."""
    while True:
        try:
            return read_item_file(parent, STEP_METADATA, limit=_LIMIT)
        except (MetadataCheckpointError, OSError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.001)


def whole_item_tie(directory: epath.Path | str) -> dict[str, int | None]:
    """What the ``save`` entry of a document that is its whole item (one process, no
    manifest) adds: ``{"step_started": <the step's init_timestamp_nsecs, or None>}``. Call
    it where the document is written, inside the step directory Orbax created."""
    return {STEP_STARTED: step_started(directory, wait=True)}


def check_step_started(
    directory: epath.Path | str, manifest: dict[str, Any], manifest_path: str
) -> None:
    """Refuses an item whose manifest names another step's save than the step it is in.

    Nothing is checked for a manifest without ``step_started`` (written outside a
    ``CheckpointManager``, or before this check existed), nor for an item that is not in a
    step directory any more, or whose step has no ``_CHECKPOINT_METADATA`` (an item copied
    on its own into a directory named like its step, as damage tests do); an item in the
    directory of another step number than its manifest's is refused by the document
    check, with that message.

    Raises:
        MetadataCheckpointError: ``step_started`` is malformed, or the step's
            ``_CHECKPOINT_METADATA`` names another save.
    """
    recorded = manifest.get(STEP_STARTED)
    here_step = step_of(directory)
    if recorded is None or here_step is None or here_step != manifest["step"]:
        return
    if type(recorded) is not int:
        raise MetadataCheckpointError(
            f"{manifest_path}: malformed {STEP_STARTED} {str(recorded)[:30]!r}. The checkpoint "
            "item is damaged or incomplete; restore an earlier step or save again."
        )
    here = step_started(directory)
    if here is not None and here != recorded:
        raise MetadataCheckpointError(
            f"{manifest_path}: the item was saved in the step whose save started at "
            f"{recorded} ns, but {_parent(directory)}/{STEP_METADATA} says {here}: the "
            "item was copied from another run "
            "(or another save of this step), and mixed with this step's other files. "
            "Restore an earlier step, or copy whole step directories only."
        )
