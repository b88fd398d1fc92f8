"""A batched Metadata sharded over 8 CPU devices, in a subprocess (the device count must be
set before JAX initialises, and this process's JAX is already initialised); the schema of
the ``sharding`` and three-number ``fill`` entries; ``verify`` of a sharded item."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from cli_helpers import copy_of, flip_byte, run_cli

from datarax.checkpoint import MetadataCheckpointError
from datarax.checkpoint.metadata_schema import FIELDS, check_document

SCRIPT = pathlib.Path(__file__).parent / "checkpoint_sharded_script.py"
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "checkpoint_v2_sharded"


def _run(*args: str) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stdout.strip().endswith("OK"), result.stdout


def test_sharded_batch_restores_with_the_targets_sharding_and_detects_damage():
    _run()


def test_sharded_fixtures_restore_onto_another_device_count_or_name_the_missing_devices():
    _run("other_devices")


def _doc_with(index_entry: dict) -> dict:
    fields = dict.fromkeys(FIELDS)
    fields.update(index={"array": index_entry}, epoch={"int": 0}, global_step={"int": 0})
    return {
        "format_version": 2, "kind": "Metadata", "process_index": 0, "process_count": 1,
        "nodes": [{"path": "", "fields": fields, "source_info": None}],
        "structure": {"metadata": ""},
    }  # fmt: skip


SHARDING = {
    "mesh_shape": [2, 4], "axis_names": ["a", "b"], "axis_types": ["Auto", "Auto"],
    "device_ids": list(range(8)), "spec": [["a", "b"], None], "memory_kind": None,
}  # fmt: skip
BAD_ENTRIES = {
    "repeat of 1": {"fill": [0, 1, 1]},
    "four fill numbers": {"fill": [0, 1, 2, 3]},
    "sharding of a global array": {"global": "n0_index", "sharding": SHARDING},
    "sharding of a NumPy array": {"container": "numpy", "fill": [0, 1], "sharding": SHARDING},
    "spec longer than the shape": {
        "fill": [0, 1], "sharding": {**SHARDING, "spec": ["a", "b", None]}
    },
    "axis used twice": {"fill": [0, 1], "sharding": {**SHARDING, "spec": [["a", "a"], None]}},
    "unknown axis": {"fill": [0, 1], "sharding": {**SHARDING, "spec": ["c", None]}},
    "device ids of another mesh": {"fill": [0, 1], "sharding": {**SHARDING, "device_ids": [0]}},
    "repeated device": {
        "fill": [0, 1], "sharding": {**SHARDING, "device_ids": [0, 1, 2, 3, 4, 5, 6, 6]}
    },
    "unknown axis type": {
        "fill": [0, 1], "sharding": {**SHARDING, "axis_types": ["Auto", "Fast"]}
    },
    "extra key": {"fill": [0, 1], "sharding": {**SHARDING, "devices": "all"}},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_ENTRIES))
def test_malformed_fills_and_shardings_are_refused_naming_the_field(name):
    entry = {"container": "jax", "dtype": "int32", "shape": [64, 2], **BAD_ENTRIES[name]}
    with pytest.raises(MetadataCheckpointError, match=r"process_0\.jsonl.*item\.index"):
        check_document(_doc_with(entry), "process_0.jsonl")


def test_a_well_formed_sharding_entry_passes_the_schema():
    entry = {"container": "jax", "dtype": "int32", "shape": [64, 2], "fill": [0, 1, 8]}
    check_document(_doc_with({**entry, "sharding": SHARDING}), "process_0.jsonl")


def test_verify_takes_a_relative_path_to_an_item_with_orbax_arrays(tmp_path):
    """Orbax refuses a relative checkpoint path; ``verify`` must not report the item that
    Orbax was asked to read so as damaged."""
    root = copy_of(FIXTURES, tmp_path)
    result = run_cli("verify", pathlib.Path(root.name) / "5" / "orbax", cwd=root.parent)
    assert result.returncode == 0 and "0 problem(s)" in result.stdout, result.stdout


def test_verify_checks_a_sharded_item_from_a_process_without_its_devices(tmp_path):
    """``datarax-checkpoint verify`` (one CPU device) decodes every value of the item saved
    over 8 devices, and finds a flipped byte of its ``process_0.bin``."""
    root = copy_of(FIXTURES, tmp_path)
    result = run_cli("verify", root / "5" / "sharded")
    assert result.returncode == 0 and "0 problem(s)" in result.stdout, result.stdout
    flip_byte(root / "5" / "sharded" / "process_0.bin", 100)
    result = run_cli("verify", root / "5" / "sharded")
    assert result.returncode != 0 and "process_0.bin" in result.stdout, result.stdout
