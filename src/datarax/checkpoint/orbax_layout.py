"""What an Orbax (0.12) checkpoint directory holds, and whether its steps are complete.

A ``CheckpointManager`` root holds one directory per step (``5``, or ``<prefix>_5``), and,
while a save is in flight, ``5.orbax-checkpoint-tmp-<n>``. A committed step directory holds
``_CHECKPOINT_METADATA`` (JSON naming every item and its handler), ``commit_success.txt``
and one directory per item, each with its own ``commit_success.txt``. An item saved by
Orbax's ``PyTreeCheckpointHandler`` (``StandardSave``, ``PyTreeSave``) holds ``_METADATA``
(its tree) and, with OCDBT (the default), ``manifest.ocdbt``, ``d/`` and
``ocdbt.process_<i>/``.

A step that ``max_to_keep`` cleanup was deleting when the job was killed keeps its name but
lacks some of these files: every check here is of files Orbax needs to restore, and a step
missing any is reported as not restorable. Nothing here writes.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import stat
from typing import Any

from etils import epath

from datarax.checkpoint.item_checks import Problem

STEP_METADATA = "_CHECKPOINT_METADATA"
COMMIT_SUCCESS = "commit_success.txt"
TMP_MARKER = ".orbax-checkpoint-tmp"
_STEP_NAME = re.compile(r"^(?:.*_)?(\d+)$")  # 5, step_5, 00005 (step_format_fixed_length)
_MAX_JSON_BYTES = 256 * 2**20  # far above any Orbax metadata file; refuses a crafted one


def _read_json(path: epath.Path) -> Any:
    """A JSON file Orbax wrote: only a regular file is opened, and only up to a bound.

    Raises:
        FileNotFoundError: It is missing.
        OSError, ValueError: It cannot be read, is no regular file, is too large or is no JSON.
    """
    name = os.fspath(path)
    if "://" not in name:
        st = os.lstat(name)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a link, FIFO or device)")
        if st.st_size > _MAX_JSON_BYTES:
            raise ValueError(f"{st.st_size} bytes, more than Orbax writes")
    return json.loads(epath.Path(path).read_text())


def step_of(name: str) -> int | None:
    """The step a committed step directory's name stands for (``5``, ``step_5``, ``005``),
    else None.

    Examples:
        >>> from datarax.checkpoint.orbax_layout import step_of
        >>> step_of("5"), step_of("step_0012"), step_of("5.orbax-checkpoint-tmp-17"), step_of("x")
        (5, 12, None, None)
    """
    match = _STEP_NAME.match(name)
    return None if match is None or TMP_MARKER in name else int(match.group(1))


def list_steps(root: epath.Path) -> tuple[dict[int, epath.Path], list[str]]:
    """The step directories of a root, by step, and the names of uncommitted (temporary)
    step directories."""
    steps: dict[int, epath.Path] = {}
    temporary = []
    for path in epath.Path(root).iterdir():
        if TMP_MARKER in path.name:
            temporary.append(path.name)
            continue
        step = step_of(path.name)
        if step is not None and path.is_dir():
            steps[step] = path
    return dict(sorted(steps.items())), sorted(temporary)


def read_step_metadata(
    step_dir: epath.Path, *, required: bool = True
) -> tuple[dict[str, str] | None, list[Problem]]:
    """The items named in the step's ``_CHECKPOINT_METADATA`` with their handlers' names.

    Args:
        step_dir: The step directory.
        required: Whether a missing file is a problem: it is for a ``CheckpointManager``
            step, not for a directory of items saved some other way.
    """
    path = epath.Path(step_dir) / STEP_METADATA
    try:
        meta = _read_json(path)
    except FileNotFoundError:
        return None, [Problem(str(path), _incomplete(path, "missing"))] if required else []
    except (OSError, ValueError) as e:
        return None, [Problem(str(path), _incomplete(path, f"unreadable ({e})"))]
    handlers = meta.get("item_handlers") if type(meta) is dict else None
    if handlers is None:
        return {}, []  # a step saved without Composite: no named items
    if type(handlers) is not dict:
        return None, [Problem(str(path), _incomplete(path, "item_handlers is malformed"))]
    return {str(k): str(v) for k, v in handlers.items()}, []


def _incomplete(path: epath.Path, what: str) -> str:
    return (
        f"{path}: {what}. The step is incomplete (a save or a max_to_keep deletion was "
        "interrupted); Orbax cannot restore it: restore an earlier step."
    )


def commit_problems(
    step_dir: epath.Path, item_dirs: list[epath.Path], *, marks_commit: bool = False
) -> list[Problem]:
    """Orbax writes ``commit_success.txt`` into the step and every item directory; once any
    of them has one, a missing one means files were deleted. Where ``marks_commit`` (a step
    on object storage, which keeps its name while it is written), the step's own file is
    what commits it: without it the save was interrupted, and Orbax does not list the step.
    """
    dirs = [epath.Path(step_dir), *item_dirs]
    have = [(d / COMMIT_SUCCESS).exists() for d in dirs]
    if marks_commit and not have[0]:
        path = dirs[0] / COMMIT_SUCCESS
        return [Problem(str(path), _incomplete(path, "missing: the step was never committed"))]
    if not any(have):
        return []
    return [
        Problem(str(d / COMMIT_SUCCESS), _incomplete(d / COMMIT_SUCCESS, "missing"))
        for d, ok in zip(dirs, have, strict=True)
        if not ok
    ]


def check_orbax_item(directory: epath.Path) -> list[Problem]:
    """Whether an item Orbax wrote holds what Orbax needs to restore it.

    For a PyTree item with OCDBT: ``_METADATA`` parses, the OCDBT database opens, lists a
    key for every array of the tree, and the first byte of every value can be read (so
    every data file the database refers to is present) — without reading the arrays. Other
    items: the directory exists.
    """
    directory = epath.Path(directory)
    if not directory.is_dir():
        return [Problem(str(directory), _incomplete(directory, "missing"))]
    meta_path = directory / "_METADATA"
    if not meta_path.exists():
        if (directory / "manifest.ocdbt").exists():
            return [Problem(str(meta_path), _incomplete(meta_path, "missing"))]
        return []  # not a PyTree item: nothing more is known of its files
    try:
        meta = _read_json(meta_path)
        tree = meta["tree_metadata"]
        use_ocdbt = bool(meta.get("use_ocdbt"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [Problem(str(meta_path), _incomplete(meta_path, f"unreadable ({e!r})"))]
    names = _array_names(tree)
    if use_ocdbt:
        return _check_ocdbt(directory, names)
    return [
        Problem(str(directory / name), _incomplete(directory / name, "missing"))
        for name in names
        if not (directory / name).exists()
    ]


def _array_names(tree: Any) -> list[str]:
    """The names Orbax stores the tree's arrays under (keys joined with dots), skipping
    values it does not store as arrays."""
    names = []
    for entry in tree.values() if type(tree) is dict else []:
        value = entry.get("value_metadata", {}) if type(entry) is dict else {}
        if value.get("skip_deserialize") or value.get("value_type") not in (
            "jax.Array",
            "np.ndarray",
        ):
            continue
        keys = [str(k.get("key")) for k in entry.get("key_metadata", [])]
        names.append(".".join(keys))
    return names


def _check_ocdbt(directory: epath.Path, names: list[str]) -> list[Problem]:
    import tensorstore as ts  # Orbax's own dependency; imported when first needed

    manifest = directory / "manifest.ocdbt"
    if not manifest.exists():
        return [Problem(str(manifest), _incomplete(manifest, "missing"))]
    name = os.fspath(directory)
    base = name if "://" in name else pathlib.Path(os.path.abspath(name)).as_uri()
    try:
        kv = ts.KvStore.open({"driver": "ocdbt", "base": base.rstrip("/") + "/"}).result()
        keys = [k.decode() for k in kv.list().result()]
        for key in keys:
            kv.read(key, byte_range=slice(0, 1)).result()
    except Exception as e:  # tensorstore reports a missing file as ValueError, others alike
        return [Problem(str(directory), _incomplete(directory, f"its OCDBT database: {e}"))]
    stored = {k.split("/", 1)[0] for k in keys}
    return [
        Problem(str(directory), _incomplete(directory, f"array {name!r} is not in its database"))
        for name in names
        if name not in stored
    ]
