"""See and trust a checkpoint without the training code: :func:`inspect`, :func:`verify`,
:func:`latest_restorable_step`.

Each takes a ``CheckpointManager`` root, one step directory, or one datarax item directory,
local or remote (``gs://``, ``s3://`` where ``etils.epath`` reaches them). They read, and
never write. The ``datarax-checkpoint`` command (:mod:`datarax.checkpoint.cli`) prints what
they return; ``docs/guides/cli.md`` documents its JSON form.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from etils import epath

from datarax.checkpoint.documents import local_name
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.item_checks import (
    ItemCheck,
    Problem,
    check_item,
    describe_document,
    read_item,
)
from datarax.checkpoint.item_files import (
    MANAGER_KIND,
    METADATA_KIND,
    is_datarax_item,
    saved_process_indices,
)
from datarax.checkpoint.orbax_layout import (
    STEP_METADATA,
    check_orbax_item,
    commit_problems,
    list_steps,
    read_step_metadata,
    step_of,
)
from datarax.checkpoint.reports import CheckpointReport, ItemReport, StepReport

Progress = Callable[[str], None]


class NotACheckpointError(MetadataCheckpointError):
    """The path is missing, or is neither a checkpoint root, nor a step, nor an item."""


def inspect(
    path: os.PathLike[str] | str, *, step: int | None = None, keys: bool = False
) -> CheckpointReport:
    """Describes a checkpoint: its steps, their items, and each datarax item's saved state
    per process (counters, shard id, streams; or the Metadata tree's nodes and shapes).

    Documents are checked against their checksums as they are read; Orbax items are only
    listed. Use :func:`verify` to check that a step restores.

    Args:
        path: A ``CheckpointManager`` root, a step directory or a datarax item directory.
        step: Only this step of a root.
        keys: Also show the stream keys' data (the bits that seed the records' keys).

    Returns:
        The report; a damaged item shows as an item with problems.

    Raises:
        NotACheckpointError: ``path`` is missing or not a checkpoint, or ``step`` is not
            one of the root's steps.

    Examples:
        >>> import tempfile
        >>> from flax import nnx
        >>> import orbax.checkpoint as ocp
        >>> import datarax.checkpoint as dc
        >>> from datarax.core.metadata import MetadataManager
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
        >>> _ = manager.create_metadata(record_key=0)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     with ocp.CheckpointManager(root) as mngr:
        ...         _ = mngr.save(3, args=ocp.args.Composite(data=dc.MetadataManagerSave(manager)))
        ...     report = dc.inspect(root)
        >>> item = report.steps[0].items[0]
        >>> (report.steps[0].step, item.name, item.kind, item.processes[0]["counters"]["index"])
        (3, 'data', 'MetadataManager', 1)
    """
    return _scan("inspect", path, step, deep=False, keys=keys, progress=None)


def verify(
    path: os.PathLike[str] | str, *, step: int | None = None, progress: Progress | None = None
) -> CheckpointReport:
    """Checks every datarax item of every step (or of one) as a restore would, on every
    process that saved it, and that every Orbax item holds the files Orbax needs. Reads
    only: nothing is written, not even a cache.

    Args:
        path: A ``CheckpointManager`` root, a step directory or a datarax item directory.
        step: Only this step of a root.
        progress: Called with a line of text per step and per datarax item checked.

    Returns:
        The report: ``report.ok``, each problem with its file, and
        ``report.latest_restorable_step``.

    Raises:
        NotACheckpointError: ``path`` is missing or not a checkpoint, or ``step`` is not
            one of the root's steps.

    Examples:
        >>> import tempfile
        >>> from flax import nnx
        >>> import orbax.checkpoint as ocp
        >>> import datarax.checkpoint as dc
        >>> from datarax.core.metadata import MetadataManager
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
        >>> with tempfile.TemporaryDirectory() as root:
        ...     with ocp.CheckpointManager(root) as mngr:
        ...         for s in (1, 2):
        ...             args = ocp.args.Composite(data=dc.MetadataManagerSave(manager))
        ...             _ = mngr.save(s, args=args)
        ...     report = dc.verify(root)
        >>> report.ok, report.latest_restorable_step
        (True, 2)
    """
    return _scan("verify", path, step, deep=True, keys=False, progress=progress)


def latest_restorable_step(root: os.PathLike[str] | str) -> int | None:
    """The newest step of a ``CheckpointManager`` root whose datarax items all verify and
    whose Orbax items are complete, or ``None``; steps are verified newest first, and
    older ones only as far as needed.

    Examples:
        >>> import tempfile
        >>> from datarax.checkpoint import latest_restorable_step
        >>> with tempfile.TemporaryDirectory() as root:
        ...     print(latest_restorable_step(root))
        None
    """
    root = _absolute(root)
    if not root.is_dir():
        raise NotACheckpointError(f"{root}: not a directory.")
    steps, _ = list_steps(root)
    for number in reversed(steps):
        if _scan_step(steps[number], number, deep=True, keys=False, progress=None).restorable:
            return number
    return None


def _absolute(path: os.PathLike[str] | str) -> epath.Path:
    """``path``, made absolute where it is a local path: Orbax refuses to restore from a
    relative one (``Checkpoint path should be absolute``)."""
    local = local_name(os.fspath(path))
    return epath.Path(path if local is None else os.path.abspath(local))


def _scan(
    command: str,
    path: os.PathLike[str] | str,
    step: int | None,
    *,
    deep: bool,
    keys: bool,
    progress: Progress | None,
) -> CheckpointReport:
    path = _absolute(path)
    layout = detect_layout(path)
    if step is not None and layout != "root":
        raise NotACheckpointError(
            f"{path}: is a {layout} directory; a step is chosen in a CheckpointManager root."
        )
    report = CheckpointReport(command, str(path), layout)
    if layout == "item":
        parent = step_of(path.parent.name)
        item = _scan_item(path, path.name, None, deep=deep, keys=keys, progress=progress)
        report.steps = [StepReport(parent, str(path.parent), [item])]
    elif layout == "step":
        number = step_of(path.name)
        report.steps = [_scan_step(path, number, deep=deep, keys=keys, progress=progress)]
    else:
        steps, report.uncommitted = list_steps(path)
        if step is not None:
            if step not in steps:
                raise NotACheckpointError(
                    f"{path}: has no step {step}; its steps are {sorted(steps) or 'none'}."
                )
            steps = {step: steps[step]}
        for i, (number, step_dir) in enumerate(steps.items()):
            if progress is not None:
                progress(f"{command}: step {number} ({i + 1} of {len(steps)})")
            report.steps.append(
                _scan_step(step_dir, number, deep=deep, keys=keys, progress=progress)
            )
    restorable = [s.step for s in report.steps if s.restorable and s.step is not None]
    report.latest_restorable_step = max(restorable) if deep and restorable else None
    return report


def detect_layout(path: epath.Path) -> str:
    """``item``, ``step`` or ``root``: what ``path`` holds.

    Raises:
        NotACheckpointError: ``path`` is missing or none of them.
    """
    if not path.exists():
        raise NotACheckpointError(f"{path}: no such file or directory.")
    if not path.is_dir():
        raise NotACheckpointError(f"{path}: not a directory; {_EXPECTED}")
    if saved_process_indices(path) and is_datarax_item(path):
        return "item"
    if (path / STEP_METADATA).exists():
        return "step"
    steps, temporary = list_steps(path)
    if steps or temporary:
        return "root"
    children = [p for p in path.iterdir() if p.is_dir()]
    if step_of(path.name) is not None and children:
        return "step"  # a step that lost its _CHECKPOINT_METADATA
    if any(is_datarax_item(p) for p in children):
        return "step"  # items saved by a Checkpointer, or by handlers directly
    raise NotACheckpointError(f"{path}: not a checkpoint; {_EXPECTED}")


_EXPECTED = (
    "expected an Orbax CheckpointManager root (holding step directories such as 5/), a step "
    f"directory (holding {STEP_METADATA}) or a datarax item directory (holding "
    "process_0.jsonl)."
)


def _scan_step(
    step_dir: epath.Path, step: int | None, *, deep: bool, keys: bool, progress: Progress | None
) -> StepReport:
    try:
        return _scan_step_files(step_dir, step, deep=deep, keys=keys, progress=progress)
    except FileNotFoundError as e:  # a live root: max_to_keep deleted it meanwhile
        message = _not_restorable(f"{step_dir}: files vanished while it was read ({e})")
        return StepReport(step, str(step_dir), problems=[Problem(str(step_dir), message)])


def _scan_step_files(
    step_dir: epath.Path, step: int | None, *, deep: bool, keys: bool, progress: Progress | None
) -> StepReport:
    handlers, problems = read_step_metadata(step_dir, required=step is not None)
    report = StepReport(step, str(step_dir), problems=problems)
    names = set(handlers or {}) | {p.name for p in step_dir.iterdir() if p.is_dir()}
    present = []
    for name in sorted(names):
        directory = step_dir / name
        handler = (handlers or {}).get(name)
        if not directory.is_dir():
            message = f"{directory}: missing, though {STEP_METADATA} lists it"
            report.problems.append(Problem(str(directory), _not_restorable(message)))
            continue
        present.append(directory)
        report.items.append(
            _scan_item(directory, name, handler, deep=deep, keys=keys, progress=progress)
        )
    if deep:
        remote_step = step is not None and local_name(os.fspath(step_dir)) is None
        report.problems.extend(commit_problems(step_dir, present, marks_commit=remote_step))
    return report


def _not_restorable(message: str) -> str:
    return (
        f"{message}. The step is incomplete (a save or a max_to_keep deletion was "
        "interrupted); restore an earlier step."
    )


_HANDLER_KINDS = {
    "datarax.checkpoint.MetadataManagerCheckpointHandler": MANAGER_KIND,
    "datarax.checkpoint.MetadataCheckpointHandler": METADATA_KIND,
}


def _scan_item(
    directory: epath.Path,
    name: str,
    handler: str | None,
    *,
    deep: bool,
    keys: bool,
    progress: Progress | None,
) -> ItemReport:
    is_ours = (handler or "").startswith("datarax.checkpoint.") or is_datarax_item(directory)
    report = ItemReport(name, str(directory), is_ours, handler)
    if not is_ours:
        report.problems = check_orbax_item(directory) if deep else []
        return report
    if progress is not None:
        progress(f"  item {name}: {'verifying' if deep else 'reading'} {directory}")
    try:
        found: ItemCheck = check_item(directory) if deep else read_item(directory)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        # Whatever a file no restore could read raises, it is this item's problem, not a crash.
        message = f"{directory}: cannot be read as a datarax item ({type(e).__name__}: {e})."
        found = ItemCheck(problems=[Problem(str(directory), message)])
    report.kind = found.kind or _HANDLER_KINDS.get(handler or "")
    report.format_version = found.format_version
    report.process_count, report.problems = found.process_count, found.problems
    if not deep:
        report.processes = [
            describe_document(doc, keys=keys) for _, doc in sorted(found.documents.items())
        ]
    return report
