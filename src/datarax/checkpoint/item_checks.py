"""Checking and describing one datarax item, every process's document, as a restore would.

:func:`check_item` reads each process's document of the item through
:mod:`datarax.checkpoint.item_files` and decodes it completely, with the code a restore runs:
a manager document is decoded and built into a new manager, a
``Metadata`` document is decoded into its pytree, its global arrays restored through the
handler's Orbax path onto this process's first device. It needs no model, no training code
and no target. :func:`describe_document` is what ``inspect`` shows of one document.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from etils import epath

from datarax.checkpoint.codec import decode_item, global_requests
from datarax.checkpoint.errors import MetadataCheckpointError
from datarax.checkpoint.item_files import (
    MANAGER_KIND,
    METADATA_KIND,
    peek_document,
    read_item_document,
    saved_process_indices,
)
from datarax.checkpoint.manager_codec import decode_manager
from datarax.checkpoint.metadata_handler import MetadataCheckpointHandler, read_blob
from datarax.checkpoint.metadata_schema import check_document
from datarax.checkpoint.shardings import without_shardings
from datarax.core._position import build_manager


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a checkpoint.

    Attributes:
        file: The file or directory at fault.
        message: What is wrong, and what to do.
    """

    file: str
    message: str


@dataclasses.dataclass
class ItemCheck:
    """What :func:`check_item` found.

    Attributes:
        kind: ``MetadataManager`` or ``Metadata`` (``None`` if no document could be read).
        format_version: The format version of process 0's document.
        process_count: How many processes saved the item.
        documents: Each readable process document, by process index.
        problems: Everything wrong, each naming its file.
    """

    kind: str | None = None
    format_version: int | None = None
    process_count: int | None = None
    documents: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)


def _error(file: str, error: Exception) -> Problem:
    return Problem(file, str(error))


def read_item(directory: epath.Path) -> ItemCheck:
    """Reads every process document of a datarax item, checking each as a restore would
    (checksum, format version, kind, process index and count), without decoding them."""
    result = ItemCheck()
    indices = saved_process_indices(directory) or [0]
    found = _first_readable(directory, indices)
    if found is None:  # no document reads: each one's own error
        for index in indices:
            try:
                peek_document(directory, index)
            except MetadataCheckpointError as e:
                result.problems.append(_error(f"{directory}/process_{index}.jsonl", e))
        return result
    first, doc, where = found
    result.kind, result.format_version = doc.get("kind"), doc.get("format_version")
    count = doc.get("process_count")
    if result.kind not in (MANAGER_KIND, METADATA_KIND):
        result.problems.append(Problem(where, f"{where}: unknown item kind {result.kind!r}."))
        return result
    if type(count) is not int or count < 1 or first >= count:
        result.problems.append(Problem(where, f"{where}: malformed process_count {count!r}."))
        return result
    result.process_count = count
    for extra in (i for i in indices if i >= count):
        file = f"{directory}/process_{extra}.jsonl"
        message = f"{file}: the item was saved by {count} process(es); this file is not of it."
        result.problems.append(Problem(file, message))
    for index in range(count):
        file = f"{directory}/process_{index}.jsonl"
        try:
            doc, _ = read_item_document(
                directory, result.kind, process_index=index, process_count=count
            )
        except MetadataCheckpointError as e:
            result.problems.append(_error(file, e))
            continue
        result.documents[index] = doc
    return result


def _first_readable(
    directory: epath.Path, indices: list[int]
) -> tuple[int, dict[str, Any], str] | None:
    """The first process document that reads, which tells the item's kind and process
    count even when another is damaged."""
    for index in indices:
        try:
            return (index, *peek_document(directory, index))
        except MetadataCheckpointError:
            continue
    return None


def check_item(directory: epath.Path) -> ItemCheck:
    """Reads and fully decodes every process document of a datarax item, as a restore
    would on each process; never writes.

    Returns:
        The item's kind, process count, documents and problems (none when it verifies).
    """
    result = read_item(directory)
    if result.kind == MANAGER_KIND:
        for index, doc in result.documents.items():
            _check_manager(doc, f"{directory}/process_{index}.jsonl", result.problems)
    elif result.kind == METADATA_KIND and result.documents:
        _check_metadata(directory, result)
    return result


def _check_manager(doc: dict[str, Any], where: str, problems: list[Problem]) -> None:
    try:
        build_manager(decode_manager(doc, where))
    except MetadataCheckpointError as e:
        problems.append(_error(where, e))


def _check_metadata(directory: epath.Path, result: ItemCheck) -> None:
    """Checks each process's Metadata document, then decodes it; the global arrays, shared
    by all processes, are restored once through the handler's Orbax path."""
    checked: dict[int, dict[str, Any]] = {}
    for index, doc in result.documents.items():
        where = f"{directory}/process_{index}.jsonl"
        if doc.get("structure") is None and isinstance(doc.get("nodes"), list):
            # Custom containers need the training code's target; the nodes still decode.
            paths = [{"metadata": node.get("path")} for node in doc["nodes"]]
            doc = {**doc, "structure": {"list": paths}}
        try:
            check_document(doc, where)
            checked[index] = doc
        except MetadataCheckpointError as e:
            result.problems.append(_error(where, e))
    if not checked:
        return
    try:
        requests = global_requests(checked[min(checked)])
        values = restore_global_arrays(directory, requests) if requests else {}
    except MetadataCheckpointError as e:
        result.problems.append(_error(str(directory), e))
        return
    for index, doc in checked.items():
        where = f"{directory}/process_{index}.jsonl"
        try:  # on this process's default device
            blob = read_blob(directory, doc) if "blob" in doc else None
            decode_item(without_shardings(doc), where, global_values=values, blob=blob)
        except MetadataCheckpointError as e:
            result.problems.append(_error(where, e))


def restore_global_arrays(directory: epath.Path, requests: dict[str, Any]) -> dict[str, Any]:
    """The item's global arrays, restored as the handler restores them (manifest check, then
    Orbax), whole, onto this process's first device: the saved sharding may name devices
    of processes this one does not have."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    requests = {name: (dtype, shape, device) for name, (dtype, shape, _) in requests.items()}
    handler = MetadataCheckpointHandler()
    try:
        return handler._restore_arrays(epath.Path(directory), requests)  # manifest read here
    finally:
        handler.close()


def describe_document(doc: dict[str, Any], *, keys: bool = False) -> dict[str, Any]:
    """What ``inspect`` shows of one process's document (see ``docs/guides/cli.md``)."""
    if doc.get("kind") == MANAGER_KIND:
        streams = doc.get("rngs")
        return {
            "process_index": doc.get("process_index"),
            "counters": dict(doc.get("state") or {}),
            "shard_id": doc.get("shard_id"),
            "track_batches": doc.get("track_batches"),
            "streams": None
            if streams is None
            else {name: _describe_stream(s, keys) for name, s in sorted(streams.items())},
        }
    return {
        "process_index": doc.get("process_index"),
        "restorable_without_target": doc.get("structure") is not None,
        "nodes": [
            {
                "path": node.get("path"),
                "fields": {
                    name: _describe_field(entry, keys)
                    for name, entry in (node.get("fields") or {}).items()
                },
            }
            for node in doc.get("nodes") or []
        ],
    }


def _describe_stream(s: dict[str, Any], keys: bool) -> dict[str, Any]:
    count = s.get("count")
    if s.get("count_shape") == [] and isinstance(count, list) and len(count) == 1:
        count = count[0]
    out = {
        "impl": s.get("impl") if s.get("typed") else "raw",
        "key_shape": s.get("key_shape"),
        "count": count,
    }
    if keys:
        out["key_data"] = s.get("key_data")
    return out


def _describe_field(entry: Any, keys: bool) -> Any:
    if entry is None:
        return None
    if "int" in entry:
        return {"held": "int", "value": entry["int"]}
    if "array" in entry:
        return {"held": "array", **_describe_array(entry["array"], keys=False)}
    k = entry["key"]
    impl = k.get("impl") if k.get("typed") else "raw"
    return {"held": "key", "impl": impl, **_describe_array(k["data"], keys=keys)}


def _describe_array(a: dict[str, Any], keys: bool) -> dict[str, Any]:
    out = {
        "container": a.get("container"),
        "dtype": a.get("dtype"),
        "shape": a.get("shape"),
        "global": "global" in a,
    }
    if keys and "data" in a:
        out["data_base64"] = a["data"]
    return out
