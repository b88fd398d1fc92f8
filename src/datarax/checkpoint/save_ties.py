"""How a process document is tied to its save, its step and the rest of its item.

Every format-version-2 process document carries ``save: {"nonce", "step"}``. Where the item
has a manifest (``item_manifest.jsonl``), the manifest must list the document's exact size
and sha256 and the same step (:func:`check_tie`). A document that is its whole item (one
process, no blob, no global arrays) says so, ``save: {..., "whole_item": true}``, and has no
manifest: it is then checked against the directory of its step alone (:func:`check_whole`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from etils import epath

from datarax.checkpoint.documents import damaged, is_whole_item, step_of
from datarax.checkpoint.errors import MetadataCheckpointError


def check_tie(
    directory: epath.Path | str,
    doc: dict[str, Any],
    header: dict[str, Any],
    manifest: dict[str, Any],
    path: str,
    manifest_path: str,
) -> None:
    """The document is the one the manifest lists, and the item is in its step's directory."""
    name = os.path.basename(path)
    listed = manifest["documents"].get(name)
    if listed != {"size": header["size"], "sha256": header["sha256"]}:
        raise MetadataCheckpointError(
            f"{path}: not the document {manifest_path} lists for it (its sha256 is "
            f"{header['sha256'][:16]}..., the manifest's "
            f"{str((listed or {}).get('sha256'))[:16]}...): the file comes from another save, "
            "step or run than the rest of the item. Restore an earlier step, or copy whole "
            "step directories only."
        )
    if header["format_version"] >= 2:
        save = _checked_save(doc, path)
        if save["step"] != manifest["step"]:
            raise MetadataCheckpointError(
                f"{path}: saved at step {save['step']}, but {manifest_path} says step "
                f"{manifest['step']}: files from two saves are mixed in this item."
            )
    here = step_of(directory)
    if here is not None and manifest["step"] is not None and here != manifest["step"]:
        raise MetadataCheckpointError(
            f"{manifest_path}: the item was saved at step {manifest['step']}, but it is in "
            f"the directory of step {here} ({path}): it was copied from another step. "
            f"Restore step {manifest['step']} where it was saved, or an earlier step."
        )


def _checked_save(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """The document's ``save`` entry, checked: ``nonce``, ``step`` (and ``whole_item``)."""
    save = doc.get("save")
    keys = {"nonce", "step", "whole_item"} if is_whole_item(doc) else {"nonce", "step"}
    if (
        type(save) is not dict
        or set(save) != keys
        or type(save["nonce"]) is not str
        or not re.fullmatch(r"[0-9a-f]{32}", save["nonce"])
        or not (save["step"] is None or type(save["step"]) is int)
    ):
        raise damaged(path, "its 'save' entry is missing or malformed")
    return save


def check_whole(directory: epath.Path | str, doc: dict[str, Any], path: str) -> None:
    """A document that is its whole item (no manifest): one process, no blob, and in its
    step's directory."""
    save = _checked_save(doc, path)
    if doc.get("process_count") != 1 or "blob" in doc:
        raise damaged(path, "it says it is the whole item, but it has other processes or a blob")
    here = step_of(directory)
    if here is not None and save["step"] is not None and here != save["step"]:
        raise MetadataCheckpointError(
            f"{path}: the item was saved at step {save['step']}, but it is in the directory "
            f"of step {here}: it was copied from another step. Restore step {save['step']} "
            "where it was saved, or an earlier step."
        )
