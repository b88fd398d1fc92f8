"""A manager document that passes its checksum is still checked field by field: what the
constructor refuses, a restore refuses, naming the field; nothing is coerced."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest
from checkpoint_oracle import manager_state, next_records
from etils import epath
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from datarax.checkpoint import (
    MetadataCheckpointError,
    MetadataManagerCheckpointHandler,
    MetadataManagerRestore,
    MetadataManagerSave,
)
from datarax.checkpoint.integrity import (
    dumps_document,
    loads_document,
    process_header,
    write_item_manifest,
)
from datarax.checkpoint.manager_codec import MANAGER_KIND, decode_manager, encode_manager
from datarax.core._position import build_manager
from datarax.core.metadata import MetadataManager

_BODY = ("state", "shard_id", "track_batches", "rngs")


def test_the_format_version_1_fixture_restores_with_and_without_a_template():
    directory = epath.Path(Path(__file__).parent / "fixtures" / "checkpoint_v1" / "manager")
    template = MetadataManager(
        rngs=nnx.Rngs(metadata=jax.random.key(0, impl="rbg"), params=0), track_batches=True
    )
    handler = MetadataManagerCheckpointHandler()
    with_template = handler.restore(directory, MetadataManagerRestore(template))
    alone = handler.restore(directory, MetadataManagerRestore())
    assert manager_state(alone) == manager_state(with_template)
    assert manager_state(alone)["state"]["index"] == (int, 5)
    assert next_records(alone, 3) == next_records(with_template, 3)


def _saved_document(tmp_path) -> tuple[epath.Path, dict]:
    directory = epath.Path(tmp_path)
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0), track_batches=True, shard_id=1)
    manager.create_metadata(record_key=0)
    MetadataManagerCheckpointHandler().save(directory, MetadataManagerSave(manager))
    path = directory / "process_0.jsonl"
    return path, loads_document(path.read_bytes(), str(path))


def _stream(**changes):
    return lambda d: {**d, "rngs": {"metadata": {**d["rngs"]["metadata"], **changes}}}


def _state(**changes):
    return lambda d: {**d, "state": {**d["state"], **changes}}


CRAFTED = {
    "negative index": (_state(index=-1), r"state\['index'\]"),
    "negative epoch": (_state(epoch=-3), r"state\['epoch'\]"),
    "float step": (_state(global_step=1.0), r"state\['global_step'\]"),
    "bool index": (_state(index=True), r"state\['index'\]"),
    "string epoch": (_state(epoch="1"), r"state\['epoch'\]"),
    "index past int64": (_state(index=2**63), r"state\['index'\].*2\*\*63"),
    "shard_id past int64": (lambda d: {**d, "shard_id": 10**30}, r"shard_id.*2\*\*63"),
    "batch_idx null while tracking": (_state(batch_idx=None), r"state\['batch_idx'\]"),
    "missing counter": (lambda d: {**d, "state": {"index": 1}}, r"state"),
    "extra counter": (_state(extra=1), r"state"),
    "shard_id string": (lambda d: {**d, "shard_id": "abc"}, "shard_id"),
    "shard_id float": (lambda d: {**d, "shard_id": 1.5}, "shard_id"),
    "shard_id list": (lambda d: {**d, "shard_id": [1, 2]}, "shard_id"),
    "shard_id negative": (lambda d: {**d, "shard_id": -1}, "shard_id"),
    "track_batches int": (lambda d: {**d, "track_batches": 1}, "track_batches"),
    "format_version float": (
        lambda d: {**d, "format_version": 2.0},
        "does not repeat the header's format_version",
    ),
    "rngs list": (lambda d: {**d, "rngs": [1]}, "rngs"),
    "count float": (_stream(count=[1.0]), r"rngs\['metadata'\].count"),
    "count bool": (_stream(count=[True]), r"rngs\['metadata'\].count"),
    "count string": (_stream(count=["1"]), r"rngs\['metadata'\].count"),
    "count negative": (_stream(count=[-1]), r"rngs\['metadata'\].count"),
    "count over uint32": (_stream(count=[2**32]), r"rngs\['metadata'\].count"),
    "count shape": (_stream(count_shape=[2]), r"rngs\['metadata'\].count"),
    "count shape other than the key's": (
        _stream(count_shape=[1], count=[1]),
        r"rngs\['metadata'\].count_shape is \[1\].*expected the key's shape \[\]",
    ),
    "key data float": (_stream(key_data=[0.0, 0]), r"rngs\['metadata'\].key_data"),
    "key data bool": (_stream(key_data=[False, 0]), r"rngs\['metadata'\].key_data"),
    "key data string": (_stream(key_data=["0", 0]), r"rngs\['metadata'\].key_data"),
    "key data over uint32": (_stream(key_data=[2**32, 0]), r"rngs\['metadata'\].key_data"),
    "key data negative": (_stream(key_data=[-1, 0]), r"rngs\['metadata'\].key_data"),
    "key data length": (_stream(key_data=[0, 0, 0]), r"rngs\['metadata'\]"),
    "typed key without impl": (_stream(impl=None), r"rngs\['metadata'\].impl"),
    "unknown impl": (_stream(impl="philox"), r"rngs\['metadata'\]: cannot rebuild .* 'philox'"),
    "typed not a bool": (_stream(typed=1), r"rngs\['metadata'\].typed"),
    "key shape": (_stream(key_shape=[3]), r"rngs\['metadata'\]"),
    "private stream name": (
        lambda d: {**d, "rngs": {"__class__": d["rngs"]["metadata"]}},
        "stream name",
    ),
    "missing key field": (
        lambda d: {**d, "rngs": {"metadata": {"typed": True}}},
        r"rngs\['metadata'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_document_is_refused_naming_the_field(tmp_path, case):
    change, field = CRAFTED[case]
    path, doc = _saved_document(tmp_path)
    path.write_bytes(dumps_document(change(doc)))
    write_item_manifest(path.parent)  # re-listed: only the document's content is wrong
    with pytest.raises(MetadataCheckpointError, match=field) as err:
        MetadataManagerCheckpointHandler().restore(
            path.parent,
            MetadataManagerRestore(MetadataManager(rngs=nnx.Rngs(metadata=0), track_batches=True)),
        )
    assert "process_0.jsonl" in str(err.value)


def test_batch_idx_without_track_batches_is_refused(tmp_path):
    directory = epath.Path(tmp_path)
    MetadataManagerCheckpointHandler().save(directory, MetadataManagerSave(MetadataManager()))
    path = directory / "process_0.jsonl"
    doc = loads_document(path.read_bytes(), str(path))
    path.write_bytes(dumps_document({**doc, "state": {**doc["state"], "batch_idx": 0}}))
    write_item_manifest(directory)
    with pytest.raises(MetadataCheckpointError, match=r"state\['batch_idx'\]"):
        MetadataManagerCheckpointHandler().restore(
            directory, MetadataManagerRestore(MetadataManager())
        )


def test_a_raw_key_round_trips_and_a_raw_key_with_an_impl_is_refused(tmp_path):
    directory = epath.Path(tmp_path)
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
    manager.rngs.metadata.key.set_value(jax.random.PRNGKey(3))  # nnx.Rngs holds typed keys
    manager.create_metadata(record_key=0)
    handler = MetadataManagerCheckpointHandler()
    handler.save(directory, MetadataManagerSave(manager))
    template = MetadataManager(rngs=nnx.Rngs(metadata=0))
    template.rngs.metadata.key.set_value(jax.random.PRNGKey(0))
    restored = handler.restore(directory, MetadataManagerRestore(template))
    assert manager_state(restored) == manager_state(manager)
    assert next_records(restored, 3) == next_records(manager, 3)
    path = directory / "process_0.jsonl"
    doc = loads_document(path.read_bytes(), str(path))
    entry = {**doc["rngs"]["metadata"], "impl": "threefry2x32"}
    path.write_bytes(dumps_document({**doc, "rngs": {"metadata": entry}}))
    write_item_manifest(directory)
    with pytest.raises(MetadataCheckpointError, match=r"rngs\['metadata'\].impl"):
        handler.restore(directory, MetadataManagerRestore(template))


# Any JSON value, of the kinds a crafted file can hold.
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=8,
)  # fmt: skip


def _paths(value, prefix=()):
    """Every path into a JSON value (dict keys and list indices)."""
    yield prefix
    if type(value) is dict:
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif type(value) is list:
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replaced(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if type(value) is dict:
        return {**value, head: _replaced(value[head], rest, new)}
    return [_replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


_VALID = {
    **process_header(MANAGER_KIND),
    "state": {"global_step": 4, "epoch": 1, "index": 2, "batch_idx": 0},
    "shard_id": 1,
    "track_batches": True,
    "rngs": {
        "metadata": {"typed": True, "impl": "rbg", "key_shape": [], "key_data": [0, 3, 0, 3],
                     "count_shape": [], "count": [2]},
        "raw": {"typed": False, "impl": None, "key_shape": [2], "key_data": [0, 5],
                "count_shape": [], "count": [0]},
    },
}  # fmt: skip


@given(data=st.data())
def test_any_change_to_a_document_restores_exactly_what_it_says_or_is_refused(data):
    """Past the checksum, a document is either a manager (built from exactly its fields) or
    a MetadataCheckpointError: never another exception from our own code."""
    paths = sorted(_paths(_VALID), key=repr)
    path = data.draw(st.sampled_from([p for p in paths if p and p[0] in _BODY]))
    doc = _replaced(_VALID, path, data.draw(_json))
    try:
        position = decode_manager(doc, "process_0.jsonl")
    except MetadataCheckpointError as e:
        assert str(e).startswith("process_0.jsonl: ")
        return
    assert encode_manager(position) == doc  # what it says, exactly
    build_manager(position)
