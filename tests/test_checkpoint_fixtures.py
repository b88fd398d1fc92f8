"""Format version 2 fixtures restore exactly; files from another save or step are refused.

``tests/fixtures/checkpoint_v2/7/`` was written once by ``make_checkpoint_v2.py`` and is
never regenerated. The values below are spelled out, not recomputed by that script.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from checkpoint_oracle import assert_exact, manager_state
from etils import epath
from flax import nnx

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataCheckpointHandler,
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
    MetadataRestore,
    MetadataSave,
)
from datarax.checkpoint.integrity import dumps_document
from datarax.core.metadata import Metadata, MetadataManager

V2 = pathlib.Path(__file__).parent / "fixtures" / "checkpoint_v2" / "7"
N = 3_000
KEYS_SHA256 = "8bf1b8dcf55ab98db7999626c179e0fdd0372dd054b4ba138f87ab4fbc210124"


def _template() -> MetadataManager:
    return MetadataManager(
        rngs=nnx.Rngs(metadata=jax.random.key(0, impl="rbg"), dropout=0), track_batches=True
    )


def _check_manager(manager: MetadataManager) -> None:
    assert manager_state(manager) == {
        "state": {"global_step": (int, 107), "epoch": (int, 3), "index": (int, 7),
                  "batch_idx": (int, 2)},
        "shard_id": 2,
        "track_batches": True,
        "streams": {"metadata": ("rbg", [0, 8, 0, 8], 7), "dropout": ("threefry2x32", [0, 21], 1)},
    }  # fmt: skip
    record = manager.create_metadata(record_key=7)
    expected = jax.random.fold_in(jax.random.key(8, impl="rbg"), 7)
    np.testing.assert_array_equal(
        jax.random.key_data(record.rng_key), jax.random.key_data(expected)
    )


def _metadata_item() -> dict:
    return {
        "last": Metadata(
            index=6, epoch=3, global_step=106, batch_idx=2, shard_id=2, key="val/0006",
            rng_key=jax.random.wrap_key_data(np.array([0, 12, 0, 12], np.uint32), impl="rbg"),
            source_info={"files": ("c.rec",), -1: [2.5, None, True], "$x": {"y": ()}},
        ),
        "pair": (Metadata(index=np.uint16(9)), None),
    }  # fmt: skip


def _check_batch(batch: Metadata) -> None:
    assert type(batch.index) is np.ndarray and batch.index.dtype == np.int64
    np.testing.assert_array_equal(batch.index, np.arange(N, dtype=np.int64) * 3)
    assert isinstance(batch.epoch, jax.Array) and batch.epoch.dtype == np.int32
    assert batch.epoch.tolist() == [3] * N
    assert batch.global_step.dtype == np.int32 and type(batch.global_step) is np.ndarray
    np.testing.assert_array_equal(batch.global_step, np.arange(N, dtype=np.int32) + 100)
    assert batch.shard_id.dtype == np.int16 and batch.shard_id.tolist() == [2] * N
    assert (batch.batch_idx, batch._encoded_key, batch.source_info) == (None, None, {"n": N})
    assert str(jax.random.key_impl(batch.rng_key)) == "threefry2x32"
    data = np.asarray(jax.random.key_data(batch.rng_key))
    assert data.shape == (N, 2) and data[0].tolist() == [696430527, 3370724820]
    assert hashlib.sha256(data.tobytes()).hexdigest() == KEYS_SHA256


def test_format_version_2_fixture_files():
    assert sorted(p.name for p in (V2 / "batch").iterdir()) == [
        "item_manifest.jsonl", "process_0.bin", "process_0.jsonl",
    ]  # fmt: skip
    for item in ("manager", "metadata"):
        assert sorted(p.name for p in (V2 / item).iterdir()) == [
            "item_manifest.jsonl", "process_0.jsonl",
        ]  # fmt: skip


def test_format_version_2_fixtures_restore_through_handlers():
    manager = MetadataManagerCheckpointHandler().restore(
        epath.Path(V2 / "manager"), MetadataManagerRestore(_template())
    )
    _check_manager(manager)
    handler = MetadataCheckpointHandler()
    assert_exact(handler.restore(epath.Path(V2 / "metadata")), _metadata_item())
    _check_batch(handler.restore(epath.Path(V2 / "batch")))


def test_format_version_2_fixtures_restore_through_checkpoint_manager(tmp_path):
    shutil.copytree(V2, tmp_path / "7")
    with ocp.CheckpointManager(tmp_path) as mngr:
        assert mngr.all_steps() == [7]
        restored = mngr.restore(
            7,
            args=ocp.args.Composite(
                manager=MetadataManagerRestore(_template()),
                metadata=MetadataRestore(_metadata_item()),
                batch=MetadataRestore(),
            ),
        )
    _check_manager(restored["manager"])
    assert_exact(restored["metadata"], _metadata_item())
    _check_batch(restored["batch"])


WHOLE = pathlib.Path(__file__).parent / "fixtures" / "checkpoint_v2_whole" / "7"


def _check_big(big: Metadata) -> None:
    assert type(big.index) is np.ndarray and big.index.dtype == np.int64
    np.testing.assert_array_equal(big.index, (np.arange(1_200_000, dtype=np.int64) * 7) % 1009)
    assert (big.epoch, big.global_step, big.rng_key, big.source_info) == (0, 0, None, None)


def test_whole_item_fixture_files_have_no_manifest():
    assert sorted(p.name for p in WHOLE.iterdir()) == [
        "_CHECKPOINT_METADATA", "batch", "big", "manager", "metadata",
    ]  # fmt: skip
    assert sorted(p.name for p in (WHOLE / "big").iterdir()) == ["process_0.bin", "process_0.jsonl"]
    started = json.loads((WHOLE / "_CHECKPOINT_METADATA").read_text())["init_timestamp_nsecs"]
    for item in ("manager", "metadata", "batch"):
        assert [p.name for p in (WHOLE / item).iterdir()] == ["process_0.jsonl"]
    for item in ("manager", "metadata", "batch", "big"):
        body = (WHOLE / item / "process_0.jsonl").read_bytes().split(b"\n")[1]
        save = json.loads(body)["save"]
        assert (save["step"], save["step_started"]) == (7, started)


def test_whole_item_fixtures_restore_through_checkpoint_manager(tmp_path):
    shutil.copytree(WHOLE, tmp_path / "7")
    with ocp.CheckpointManager(tmp_path) as mngr:
        restored = mngr.restore(
            7,
            args=ocp.args.Composite(
                manager=MetadataManagerRestore(_template()),
                metadata=MetadataRestore(_metadata_item()),
                batch=MetadataRestore(),
                big=MetadataRestore(),
            ),
        )
    _check_manager(restored["manager"])
    assert_exact(restored["metadata"], _metadata_item())
    _check_batch(restored["batch"])
    _check_big(restored["big"])


def test_whole_item_fixtures_restore_through_handlers():
    _check_manager(MetadataManagerCheckpointHandler().restore(epath.Path(WHOLE / "manager")))
    handler = MetadataCheckpointHandler()
    assert_exact(handler.restore(epath.Path(WHOLE / "metadata")), _metadata_item())
    _check_batch(handler.restore(epath.Path(WHOLE / "batch")))
    _check_big(handler.restore(epath.Path(WHOLE / "big")))


@pytest.mark.parametrize("item", ["manager", "batch", "big"])
def test_a_whole_item_fixture_beside_another_saves_step_metadata_is_refused(tmp_path, item):
    shutil.copytree(WHOLE, tmp_path / "7")
    metadata = json.loads((tmp_path / "7" / "_CHECKPOINT_METADATA").read_text())
    metadata["init_timestamp_nsecs"] += 1
    (tmp_path / "7" / "_CHECKPOINT_METADATA").write_text(json.dumps(metadata))
    handler = (
        MetadataManagerCheckpointHandler() if item == "manager" else MetadataCheckpointHandler()
    )
    with pytest.raises(
        MetadataCheckpointError,
        match=rf"7/{item}/process_0\.jsonl: the item was saved in the step whose save started at "
        rf"{metadata['init_timestamp_nsecs'] - 1} ns, but \S+/7/_CHECKPOINT_METADATA says "
        rf"{metadata['init_timestamp_nsecs']}",
    ):
        handler.restore(epath.Path(tmp_path / "7" / item))


def test_a_blob_in_parts_names_the_damaged_part(tmp_path):
    shutil.copytree(WHOLE, tmp_path / "7")
    item = tmp_path / "7" / "big"
    entry = json.loads((item / "process_0.jsonl").read_bytes().split(b"\n")[1])["blob"]
    assert (entry["size"], entry["part_size"], len(entry["part_sha256"])) == (9_600_000, 8 << 20, 2)
    blob = item / "process_0.bin"
    data = blob.read_bytes()
    for at, span in ((5, "0 to 8388607"), (9_000_000, "8388608 to 9599999")):
        blob.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
        with pytest.raises(
            MetadataCheckpointError,
            match=rf"big/process_0\.bin: its sha256 differs in bytes {span} from the one in "
            r"process_0\.jsonl",
        ):
            MetadataCheckpointHandler().restore(epath.Path(item))
    blob.write_bytes(data)
    _check_big(MetadataCheckpointHandler().restore(epath.Path(item)))


@pytest.mark.parametrize(
    "blob",
    [
        {"size": 9_600_000, "part_size": 1024, "part_sha256": ["0" * 64] * 9375},  # tiny parts
        {"size": 9_600_000, "part_size": 8 << 20, "part_sha256": ["0" * 64]},  # one too few
        {"size": 9_600_000, "part_size": 8 << 20, "part_sha256": ["0" * 64, 7]},
        {"size": 9_600_000, "part_size": 8 << 20, "sha256": "0" * 64, "part_sha256": []},
    ],
)
def test_a_crafted_blob_entry_is_refused_before_the_blob_is_read(tmp_path, blob):
    shutil.copytree(WHOLE, tmp_path / "7")
    path = tmp_path / "7" / "big" / "process_0.jsonl"
    doc = json.loads(path.read_bytes().split(b"\n")[1])
    doc["blob"] = blob
    path.write_bytes(dumps_document(doc))
    with pytest.raises(MetadataCheckpointError, match=r"its 'blob' entry is malformed"):
        MetadataCheckpointHandler().restore(epath.Path(tmp_path / "7" / "big"))


def test_a_version_2_document_that_is_not_whole_needs_its_manifest(tmp_path):
    shutil.copytree(V2, tmp_path / "7")
    (tmp_path / "7" / "metadata" / "item_manifest.jsonl").unlink()
    with pytest.raises(MetadataCheckpointError, match=r"item_manifest\.jsonl: missing.*never"):
        MetadataCheckpointHandler().restore(epath.Path(tmp_path / "7" / "metadata"))


# --- files from another save, step or run (issue 8, item 3) ----------------------------------


def _save_steps(root: pathlib.Path) -> None:
    """Steps 1 and 2 of one run, each with a manager item and a Metadata item."""
    manager = MetadataManager(rngs=nnx.Rngs(metadata=3))
    with ocp.CheckpointManager(root) as mngr:
        for step in (1, 2):
            manager.create_metadata(record_key=step)
            mngr.save(
                step,
                args=ocp.args.Composite(
                    data=MetadataManagerSave(manager),
                    meta=MetadataSave({"step": Metadata(index=step, global_step=step * 10)}),
                ),
            )
        mngr.wait_until_finished()


def _restore(root: pathlib.Path, step: int, item: str):
    with ocp.CheckpointManager(root) as mngr:
        template = MetadataManager(rngs=nnx.Rngs(metadata=0))
        restore = MetadataRestore() if item == "meta" else MetadataManagerRestore(template)
        return mngr.restore(step, args=ocp.args.Composite(**{item: restore}))[item]


@pytest.mark.parametrize("item", ["data", "meta"])
def test_a_document_copied_from_another_step_is_an_error_naming_it(tmp_path, item):
    _save_steps(tmp_path)
    shutil.copy(tmp_path / "1" / item / "process_0.jsonl", tmp_path / "2" / item)
    with pytest.raises(
        MetadataCheckpointError,
        match=r"process_0\.jsonl: the item was saved at step 1, but it is in the directory of "
        r"step 2 .*copied from another step",
    ):
        _restore(tmp_path, 2, item)


@pytest.mark.parametrize("item", ["data", "meta"])
def test_a_whole_item_copied_from_another_step_is_an_error(tmp_path, item):
    _save_steps(tmp_path)
    shutil.rmtree(tmp_path / "2" / item)
    shutil.copytree(tmp_path / "1" / item, tmp_path / "2" / item)
    with pytest.raises(MetadataCheckpointError, match=r"saved at step 1.*step 2.*another step"):
        _restore(tmp_path, 2, item)


@pytest.mark.parametrize("item", ["data", "meta"])
def test_a_document_from_another_run_at_the_same_step_is_an_error(tmp_path, item):
    _save_steps(tmp_path / "a")
    _save_steps(tmp_path / "b")  # the same values: only the save differs
    shutil.copy(tmp_path / "a" / "2" / item / "process_0.jsonl", tmp_path / "b" / "2" / item)
    with pytest.raises(
        MetadataCheckpointError,
        match=r"process_0\.jsonl: the item was saved in the step whose save started at \d+ ns, "
        r"but \S+/b/2/_CHECKPOINT_METADATA says \d+: the item was copied from another run",
    ):
        _restore(tmp_path / "b", 2, item)


def test_each_step_restores_its_own_values(tmp_path):
    _save_steps(tmp_path)
    for step in (1, 2):
        assert _restore(tmp_path, step, "meta") == {
            "step": Metadata(index=step, global_step=step * 10)
        }
