"""Damaged, incomplete, newer and older checkpoint items: exact state or a clear error."""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest
from checkpoint_oracle import assert_exact, manager_state
from etils import epath
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataCheckpointHandler,
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
)
from datarax.checkpoint.integrity import FORMAT_VERSION
from datarax.core.metadata import Metadata, MetadataManager

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "checkpoint_v1"


def _fixture_manager() -> MetadataManager:
    """A manager built like the one saved in the fixture (other seeds: they are restored)."""
    return MetadataManager(
        rngs=nnx.Rngs(metadata=jax.random.key(0, impl="rbg"), params=0), track_batches=True
    )


def _fixture_item() -> dict:
    """What the fixture's Metadata item holds, spelled out."""
    return {
        "last": Metadata(
            index=4, epoch=2, global_step=44, batch_idx=1, shard_id=1, key="train/00004",
            rng_key=jax.random.key(5), source_info={"files": ("a.rec", "b.rec"), 7: [1.5, None]},
        ),
        "batch": [
            Metadata(
                index=np.array([0, 1, 2], dtype=np.int32), epoch=np.int64(2),
                rng_key=jax.numpy.array([0, 9], dtype=np.uint32),
                global_step=jax.numpy.array([41, 42, 43], dtype=np.int32),
            ),
        ],
    }  # fmt: skip


def test_format_version_1_manager_fixture_restores():
    manager = MetadataManagerCheckpointHandler().restore(
        epath.Path(FIXTURES / "manager"), MetadataManagerRestore(_fixture_manager())
    )
    assert manager_state(manager) == {
        "state": {"global_step": (int, 45), "epoch": (int, 2), "index": (int, 5),
                  "batch_idx": (int, 1)},
        "shard_id": 1,
        "track_batches": True,
        "streams": {"metadata": ("rbg", [0, 3, 0, 3], 5), "params": ("threefry2x32", [0, 11], 1)},
    }  # fmt: skip
    record = manager.create_metadata(record_key=5)
    expected = jax.random.fold_in(jax.random.key(3, impl="rbg"), 5)
    np.testing.assert_array_equal(
        jax.random.key_data(record.rng_key), jax.random.key_data(expected)
    )


def test_format_version_1_metadata_fixture_restores():
    restored = MetadataCheckpointHandler().restore(epath.Path(FIXTURES / "metadata"))
    assert_exact(restored, _fixture_item())
    assert restored["last"].entry_key == "train/00004"


def _copy_fixture(name: str, tmp: pathlib.Path) -> epath.Path:
    shutil.copytree(FIXTURES / name, tmp / name)
    return epath.Path(tmp / name)


def _set_header_version(path: epath.Path, version: int) -> None:
    header, body = path.read_bytes().split(b"\n", 1)
    fields = json.loads(header)
    fields["format_version"] = version
    path.write_bytes(json.dumps(fields, separators=(",", ":")).encode() + b"\n" + body)


def test_a_newer_format_version_is_a_clear_error(tmp_path):
    directory = _copy_fixture("manager", tmp_path)
    _set_header_version(directory / "process_0.jsonl", FORMAT_VERSION + 1)
    newer = rf"format version {FORMAT_VERSION + 1}, newer .*\(up to {FORMAT_VERSION}\)"
    with pytest.raises(MetadataCheckpointError, match=newer):
        MetadataManagerCheckpointHandler().restore(
            directory, MetadataManagerRestore(_fixture_manager())
        )


# --- damage: every file of a saved item, truncated, with a byte changed, or deleted ----------


def _save_manager(directory: epath.Path) -> None:
    manager = MetadataManager(rngs=nnx.Rngs(metadata=1, params=jax.random.key(2, impl="rbg")))
    manager.create_batch_metadata(list(range(10)))
    MetadataManagerCheckpointHandler().save(directory, MetadataManagerSave(manager))


def _restore_manager(directory: epath.Path) -> None:
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0, params=jax.random.key(0, impl="rbg")))
    MetadataManagerCheckpointHandler().restore(directory, MetadataManagerRestore(manager))


def _save_metadata(directory: epath.Path) -> None:
    item = _fixture_item()
    item["batch"].append(Metadata(index=jax.numpy.arange(4), rng_key=jax.random.key(1)))
    MetadataCheckpointHandler().save(directory, MetadataSave(item))


def _restore_metadata(directory: epath.Path) -> None:
    MetadataCheckpointHandler().restore(directory, MetadataRestore())


ITEMS = {
    "manager": (_save_manager, _restore_manager),
    "metadata": (_save_metadata, _restore_metadata),
}
_PRISTINE: dict[str, pathlib.Path] = {}


@pytest.fixture(autouse=True, scope="module")
def _remove_pristine_items():
    """The saved items are shared by this module's tests (hypothesis's too): removed once
    they have all run, so that no directory is left behind."""
    yield
    for path in _PRISTINE.values():
        shutil.rmtree(path)
    _PRISTINE.clear()


def _pristine(kind: str) -> pathlib.Path:
    """A saved item, written once per test session and copied before each damage."""
    if kind not in _PRISTINE:
        path = pathlib.Path(tempfile.mkdtemp(prefix=f"datarax-{kind}-"))
        ITEMS[kind][0](epath.Path(path))
        _PRISTINE[kind] = path
    return _PRISTINE[kind]


def _damage(path: pathlib.Path, how: str, position: float, mask: int) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: int(position * len(data))])  # position < 1: at least 1 byte less
    else:
        i = min(int(position * len(data)), len(data) - 1)
        path.write_bytes(data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :])


def _check_damage(kind: str, file_index: int, how: str, position: float, mask: int) -> None:
    pristine = _pristine(kind)
    files = sorted(p.relative_to(pristine) for p in pristine.rglob("*") if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "item"
        shutil.copytree(pristine, copy)
        target = copy / files[file_index % len(files)]
        _damage(target, how, position, mask)
        with pytest.raises(MetadataCheckpointError, match=target.name):
            ITEMS[kind][1](epath.Path(copy))


@pytest.mark.parametrize("kind", sorted(ITEMS))
@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_every_file_damaged_is_an_error_naming_it(kind, how):
    pristine = _pristine(kind)
    ITEMS[kind][1](epath.Path(pristine))  # the undamaged item restores
    n_files = sum(1 for p in pristine.rglob("*") if p.is_file())
    for file_index in range(n_files):
        for position in (0.0, 0.05, 0.5, 0.99):
            _check_damage(kind, file_index, how, position, 0x01)


@given(
    kind=st.sampled_from(sorted(ITEMS)),
    file_index=st.integers(0, 100),
    how=st.sampled_from(["delete", "truncate", "flip"]),
    position=st.floats(0.0, 0.999),
    mask=st.integers(1, 255),
)
def test_damage_anywhere_is_an_error(kind, file_index, how, position, mask):
    _check_damage(kind, file_index, how, position, mask)


@pytest.mark.parametrize("kind", sorted(ITEMS))
@pytest.mark.parametrize("where", ["start", "inside the header", "end of the header"])
def test_a_byte_inserted_into_a_header_is_an_error_naming_the_file(kind, where):
    """JSON would read a header with a space added as the same header: each file must be
    byte for byte what the handler wrote."""
    pristine = _pristine(kind)
    for rel in sorted(p.relative_to(pristine) for p in pristine.rglob("*.jsonl")):
        with tempfile.TemporaryDirectory() as tmp:
            copy = pathlib.Path(tmp) / "item"
            shutil.copytree(pristine, copy)
            data = (copy / rel).read_bytes()
            at = {"start": 0, "inside the header": data.index(b","), "end of the header": None}
            i = data.index(b"\n") if at[where] is None else at[where]
            (copy / rel).write_bytes(data[:i] + b" " + data[i:])
            with pytest.raises(MetadataCheckpointError, match=rel.name):
                ITEMS[kind][1](epath.Path(copy))


def test_a_missing_item_is_an_error(tmp_path):
    with pytest.raises(MetadataCheckpointError, match="holds no datarax checkpoint item"):
        _restore_manager(epath.Path(tmp_path))


@pytest.mark.parametrize("records", [10_000, 200_000])  # hashed inline, hashed in background
@pytest.mark.parametrize("how", ["flip", "truncate", "swap"])
def test_a_damaged_or_swapped_blob_is_an_error_naming_it(tmp_path, records, how):
    def save(directory: pathlib.Path, seed: int) -> None:
        directory.mkdir(parents=True)
        keys = jax.random.split(jax.random.key(seed), records)
        item = Metadata(index=np.arange(records), rng_key=keys)
        MetadataCheckpointHandler().save(epath.Path(directory), MetadataSave(item))

    save(tmp_path / "a", 1)
    save(tmp_path / "b", 2)
    blob = tmp_path / "a" / "process_0.bin"
    data = blob.read_bytes()
    assert len(data) == records * 8 + (-records * 8 % 64)  # the keys; index is a fill
    if how == "flip":
        blob.write_bytes(data[:100] + bytes([data[100] ^ 4]) + data[101:])
    elif how == "truncate":
        blob.write_bytes(data[:-1])
    else:  # the blob of another save, of the same size
        shutil.copy(tmp_path / "b" / "process_0.bin", blob)
    with pytest.raises(MetadataCheckpointError, match=r"process_0\.bin"):
        _restore_metadata(epath.Path(tmp_path / "a"))


@pytest.mark.parametrize("records", [2_000, 200_000])  # hashed inline, hashed in background
def test_a_blob_damaged_where_decoding_fails_is_reported_as_the_blob_s_damage(tmp_path, records):
    """A changed byte of a record key in the blob makes the key invalid UTF-8: the error
    must still say that the blob is damaged, not that the document holds a bad Metadata."""
    keys = np.array([f"k{i}" for i in range(records)])
    item = Metadata(index=np.arange(records) * 7 % 5, key=keys)
    MetadataCheckpointHandler().save(epath.Path(tmp_path), MetadataSave(item))
    blob = tmp_path / "process_0.bin"
    data = bytearray(blob.read_bytes())
    at = data.find(b"k1\x00")
    data[at + 1] ^= 0x80  # "1" becomes a lone UTF-8 continuation byte
    blob.write_bytes(bytes(data))
    with pytest.raises(MetadataCheckpointError, match=r"process_0\.bin: its sha256 differs"):
        _restore_metadata(epath.Path(tmp_path))


# --- reading an item's files ------------------------------------------------------------------


def test_item_files_are_read_exactly_whole_first_bytes_or_mutable(tmp_path):
    from datarax.checkpoint.safe_files import read_item_file

    data = bytes(range(256)) * 40 + b"\nend"
    (tmp_path / "f").write_bytes(data)
    assert read_item_file(tmp_path, "f") == data
    assert read_item_file(tmp_path, "f", first=100) == data[:100]
    assert read_item_file(tmp_path, "f", first=len(data) + 50) == data
    mutable = read_item_file(tmp_path, "f", size=len(data), mutable=True)
    assert type(mutable) is np.ndarray and mutable.dtype == np.uint8 and mutable.flags.writeable
    assert mutable.tobytes() == data
    big = bytes(range(251)) * (41 << 12)  # 41 MiB and some: mapped memory, read in 6 parts
    (tmp_path / "big").write_bytes(big)
    parts: list[bytes] = []
    mapped = read_item_file(
        tmp_path, "big", size=len(big), mutable=True, on_part=parts.append, part_size=8 << 20
    )
    assert mapped.flags.writeable and mapped.tobytes() == big
    assert [len(p) for p in parts] == [8 << 20] * 5 + [len(big) - (40 << 20)]
    assert b"".join(parts) == big
    (tmp_path / "empty").write_bytes(b"")
    assert read_item_file(tmp_path, "empty") == b""


def test_a_file_that_grows_or_shrinks_after_its_size_was_taken_reads_differently(tmp_path):
    import os

    from datarax.checkpoint.safe_files import _read_array, _read_fd

    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(path, "ab") as f:
            f.write(b"more")
        assert len(_read_fd(fd, 1000, None)) == 1001  # the caller sees 1001 != 1000
        os.lseek(fd, 0, os.SEEK_SET)
        os.truncate(path, 10)
        assert len(_read_fd(fd, 1000, None)) == 10
        for chunks in (None, []):
            os.lseek(fd, 0, os.SEEK_SET)
            parts = None if chunks is None else (chunks.append, 100)
            assert _read_array(fd, 1000, parts) == b""  # shorter than its size: reported
            assert chunks in (None, [])  # and no part of it handed on
    finally:
        os.close(fd)


def test_a_blob_of_several_parts_hashed_while_read_catches_damage_in_any_part(tmp_path):
    # Over 8 MiB: read in parts, each hashed on another thread as soon as it is read.
    index = np.random.default_rng(3).permutation(1_200_000).astype(np.int64)  # 9.6 MB
    item = Metadata(index=index, rng_key=jax.random.split(jax.random.key(2), 1000))
    directory = tmp_path / "item"
    directory.mkdir()
    handler = MetadataCheckpointHandler()
    handler.save(epath.Path(directory), MetadataSave(item))
    blob = directory / "process_0.bin"
    assert blob.stat().st_size > 9_600_000
    restored = handler.restore(epath.Path(directory), MetadataRestore())
    np.testing.assert_array_equal(restored.index, index)
    data = blob.read_bytes()
    for at in (0, (8 << 20) - 1, 8 << 20, len(data) - 1):
        blob.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :])
        with pytest.raises(MetadataCheckpointError, match=r"process_0\.bin: its sha256 differs"):
            handler.restore(epath.Path(directory), MetadataRestore())
    blob.write_bytes(data)
    np.testing.assert_array_equal(handler.restore(epath.Path(directory)).index, index)
