"""Crafted items: a restore reads only regular files inside the item, of a bounded size, and
refuses a checksum-valid document as strictly as the ``Metadata`` constructor."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest
from etils import epath

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataCheckpointHandler,
    MetadataRestore,
    MetadataSave,
)
from datarax.checkpoint.integrity import (
    MAX_DOCUMENT_BYTES,
    dumps_document,
    write_item_manifest,
)
from datarax.checkpoint.safe_files import read_item_file
from datarax.core.metadata import Metadata

ITEM = {
    "a": Metadata(
        index=1, epoch=2, global_step=3, batch_idx=0, shard_id=4, rng_key=jax.random.key(5)
    ),
    "b": Metadata(index=np.arange(3, dtype=np.int32), rng_key=jax.random.PRNGKey(1)),
}


def _save(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "item"
    directory.mkdir(parents=True)
    MetadataCheckpointHandler().save(epath.Path(directory), MetadataSave(ITEM))
    return directory


def _restore(directory: pathlib.Path) -> Any:
    return MetadataCheckpointHandler().restore(epath.Path(directory), MetadataRestore())


def _resign(path: pathlib.Path, edit: Callable[[dict], Any]) -> None:
    """Edits the document in ``path`` and writes it back with a valid header."""
    doc = json.loads(path.read_bytes().split(b"\n", 1)[1])
    edit(doc)
    path.write_bytes(dumps_document(doc))


def _craft(tmp_path: pathlib.Path, edit: Callable[[dict], Any]) -> pathlib.Path:
    """A saved item whose document is edited, re-signed and listed in a new manifest: only
    its content can tell that datarax did not write it."""
    directory = _save(tmp_path)
    _resign(directory / "process_0.jsonl", edit)
    write_item_manifest(epath.Path(directory))
    return directory


def _field(name: str, node: int = 0) -> Callable[[dict], dict]:
    return lambda doc: doc["nodes"][node]["fields"][name]


def _set(node: int, name: str, value: Any) -> Callable[[dict], None]:
    return lambda doc: doc["nodes"][node]["fields"].__setitem__(name, value)


def _set_in(get: Callable[[dict], dict], key: str, value: Any) -> Callable[[dict], None]:
    return lambda doc: get(doc).__setitem__(key, value)


CRAFTED = {
    "negative counter": (_set(0, "index", {"int": -1}), r"\['a'\]\.index: -1 is not a non-neg"),
    "shard_id str": (_set(0, "shard_id", {"int": "abc"}), r"\['a'\]\.shard_id: 'abc' is not"),
    "shard_id float": (_set(0, "shard_id", {"int": 1.5}), r"\['a'\]\.shard_id: 1\.5 is not"),
    "shard_id list": (_set(0, "shard_id", {"int": [1, 2]}), r"\['a'\]\.shard_id: \[1, 2\] is not"),
    "int as float": (_set(0, "epoch", {"int": 2.0}), r"\['a'\]\.epoch: 2\.0 is not"),
    "int as bool": (_set(0, "epoch", {"int": True}), r"\['a'\]\.epoch: True is not"),
    "int as str": (_set(0, "global_step", {"int": "3"}), r"\['a'\]\.global_step: '3' is not"),
    "required counter null": (_set(0, "index", None), r"\['a'\]\.index: None, but"),
    "typed key without impl": (
        _set_in(lambda d: _field("rng_key")(d)["key"], "impl", None),
        r"\['a'\]\.rng_key: a typed key must name its impl",
    ),
    "key data int32": (
        _set_in(lambda d: _field("rng_key", 1)(d)["key"]["data"], "dtype", "int32"),
        r"\['b'\]\.rng_key: key data of dtype int32, expected uint32",
    ),
    "float counter array": (
        _set_in(lambda d: _field("index", 1)(d)["array"], "dtype", "float32"),
        r"\['b'\]\.index: an array of dtype float32",
    ),
    "object dtype": (
        _set_in(lambda d: _field("index", 1)(d)["array"], "dtype", "object"),
        r"\['b'\]\.index: unsupported dtype 'object'",
    ),
    "shape of floats": (
        _set_in(lambda d: _field("index", 1)(d)["array"], "shape", [3.0]),
        r"\['b'\]\.index: malformed shape",
    ),
    "typed flag as int": (
        _set_in(lambda d: _field("rng_key")(d)["key"], "typed", 1),
        r"\['a'\]\.rng_key: 'typed' is 1, not a bool",
    ),
    "unknown key": (lambda d: d.__setitem__("extra", 1), r"has keys .*'extra'"),
    "process_count as float": (
        lambda d: d.__setitem__("process_count", 1.0),
        r"saved by 1\.0 process|process_count is not a valid int",
    ),
    "source_info nested 150 deep": (
        lambda d: d["nodes"][0].__setitem__(
            "source_info", {"x": json.loads("[" * 150 + "]" * 150)}
        ),
        r"nested more than 100 levels deep",
    ),
    "document nested 100000 deep": (
        lambda d: d["nodes"][0].__setitem__("source_info", "@DEEP@"),
        r"nested too deeply",
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_document_is_refused_naming_the_field(tmp_path, case):
    edit, message = CRAFTED[case]
    directory = _craft(tmp_path, edit)
    if case == "document nested 100000 deep":  # json.dumps cannot write it: splice it in
        path = directory / "process_0.jsonl"
        body = (
            path.read_bytes()
            .split(b"\n", 1)[1]
            .replace(b'"@DEEP@"', b"[" * 100_000 + b"]" * 100_000)
        )
        _write_signed(path, body)
        write_item_manifest(epath.Path(directory))
    with pytest.raises(MetadataCheckpointError, match=message):
        _restore(directory)


def _write_signed(path: pathlib.Path, body: bytes) -> None:
    import hashlib

    header = {"format": "datarax.checkpoint", "format_version": 2,
              "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}  # fmt: skip
    path.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n" + body)


def test_the_uncrafted_item_restores(tmp_path):
    restored = _restore(_craft(tmp_path, lambda doc: None))
    assert restored == ITEM


# --- manifest paths, file types, sizes --------------------------------------------------------


def _craft_manifest(directory: pathlib.Path, files: dict[str, Any]) -> None:
    """A manifest beside the item's document (a single process's item has none of its own,
    but one that is there is read first, and checked), listing ``files``."""
    write_item_manifest(epath.Path(directory))
    _resign(directory / "item_manifest.jsonl", lambda m: m.__setitem__("files", files))


@pytest.mark.parametrize(
    "rel", ["../outside.bin", "/etc/hostname", "d/../../outside.bin", "./x", "d//x", "d\\x", ""]
)
def test_a_manifest_path_outside_the_item_is_refused_without_reading_it(tmp_path, rel):
    (tmp_path / "outside.bin").write_bytes(b"x" * 12345)
    directory = _save(tmp_path)
    _craft_manifest(directory, {rel: {"size": 1, "sha256": "0" * 64}})
    with pytest.raises(MetadataCheckpointError, match="not a relative, normalised path") as e:
        _restore(directory)
    assert "12345" not in str(e.value)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    for name in ("process_0.jsonl", "item_manifest.jsonl"):
        directory = _save(tmp_path / name)
        (directory / name).unlink(missing_ok=True)  # a single process's item has no manifest
        os.mkfifo(directory / name)
        with pytest.raises(MetadataCheckpointError, match=rf"{name}: it is a FIFO"):
            _restore(directory)


def test_a_symlink_is_not_followed(tmp_path):
    directory = _save(tmp_path)
    outside = tmp_path / "elsewhere.jsonl"
    (directory / "process_0.jsonl").rename(outside)
    (directory / "process_0.jsonl").symlink_to(outside)  # the very document, moved out
    with pytest.raises(MetadataCheckpointError, match=r"process_0\.jsonl: it is a symbolic link"):
        _restore(directory)


def test_a_symlinked_folder_in_a_listed_path_is_not_followed(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x").write_bytes(b"y" * 777)
    (tmp_path / "item").mkdir()
    (tmp_path / "item" / "d").symlink_to(tmp_path / "outside")
    with pytest.raises(MetadataCheckpointError, match=r"item/d: it is a symbolic link") as e:
        read_item_file(tmp_path / "item", "d/x", size=777)
    assert "777" not in str(e.value)


def test_a_huge_document_is_refused_before_it_is_read(tmp_path):
    directory = _save(tmp_path)
    path = directory / "process_0.jsonl"
    with open(path, "r+b") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GiB that reading would have to allocate
    with pytest.raises(
        MetadataCheckpointError, match=rf"more than the {MAX_DOCUMENT_BYTES + 4097} bytes"
    ):
        _restore(directory)


def test_a_signed_document_that_is_not_ascii_is_refused(tmp_path):
    # Every version writes documents with ensure_ascii: a body with other bytes is not ours.
    directory = _save(tmp_path)
    path = directory / "process_0.jsonl"
    body = path.read_bytes().split(b"\n", 1)[1].replace(b'"key"', '"k\u00e9y"'.encode(), 1)
    assert b"\xc3\xa9" in body
    _write_signed(path, body)
    not_ascii = r"process_0\.jsonl: the document is not ASCII"
    with pytest.raises(MetadataCheckpointError, match=not_ascii):
        _restore(directory)
