"""The record streams of the integration workers; the tests recompute them as reference.

A stream is a ``MetadataManager`` handing out batches of record metadata, one batch per
step, with an epoch every ``epoch_steps`` steps. Its logs hold every field exactly (the
rng key as its key data), so a test compares a resumed stream with an uninterrupted one by
plain equality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from datarax.core.metadata import MetadataManager, RecordMetadata
from examples.demo.processes import read_jsonl, wait_to_be_killed

read_logs = read_jsonl
"""A worker's JSON-lines log by step; a last line cut short by a kill is ignored."""


def shard_manager(seed: int, shard_id: int | None) -> MetadataManager:
    """The manager of one process's shard: its own key stream, its shard id."""
    return MetadataManager(
        rngs=nnx.Rngs(metadata=seed + (shard_id or 0)), track_batches=True, shard_id=shard_id
    )


def next_batch(manager: MetadataManager, step: int, batch: int, epoch_steps: int) -> RecordMetadata:
    """The records of ``step``: a new epoch every ``epoch_steps`` steps."""
    if step and step % epoch_steps == 0:
        manager.next_epoch()
    shard = manager.shard_id or 0
    keys = np.arange(step * batch, (step + 1) * batch) + 1_000_000 * shard
    records = manager.create_batch_metadata(keys)
    manager.next_batch()
    return records


def record_log(records: RecordMetadata) -> dict[str, Any]:
    """Every field of a batch of records, as JSON-ready lists."""
    log = {
        name: np.asarray(getattr(records, name)).tolist()
        for name in ("index", "epoch", "global_step", "batch_idx", "shard_id", "record_key")
    }
    log["rng_key"] = np.asarray(jax.random.key_data(records.rng_key)).tolist()
    return log


def one_record_log(record: RecordMetadata) -> dict[str, Any]:
    """Every field of one record, JSON-ready."""
    return {
        "index": record.index,
        "epoch": record.epoch,
        "global_step": record.global_step,
        "record_key": record.record_key,
        "rng_key": np.asarray(jax.random.key_data(record.rng_key)).tolist(),
    }


def resumed_logs(attempts: list[Path]) -> dict[int, dict[str, Any]]:
    """The stream as the job produced it across restarts: each attempt's logs from the step
    it started at, until the step the next attempt restarted from."""
    runs = [read_logs(path) for path in attempts]
    starts = [min(logs) if logs else None for logs in runs]
    combined: dict[int, dict[str, Any]] = {}
    for i, logs in enumerate(runs):
        later = [s for s in starts[i + 1 :] if s is not None]
        end = min(later) if later else None
        combined.update({s: log for s, log in logs.items() if end is None or s < end})
    return combined


def fixture_next_record(manager: MetadataManager) -> dict[str, Any]:
    """One record of the job that resumes the format-1 fixture: a batch every 4 records,
    an epoch every 12; returns its log."""
    record = manager.create_metadata(record_key=manager.state.get_value()["global_step"])
    step = manager.state.get_value()["global_step"]
    if step % 4 == 0:
        manager.next_batch()
    if step % 12 == 0:
        manager.next_epoch()
    return {
        "step": record.global_step,
        **one_record_log(record),
        "batch_idx": record.batch_idx,
        "shard_id": record.shard_id,
    }


def read_only_manager(directory: Path) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` over ``directory`` that lists and restores, and never writes
    or deletes anything."""
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, save_interval_steps=0, max_to_keep=None
    )
    return ocp.CheckpointManager(directory, options=options)


def committed_steps(directory: Path) -> list[int]:
    """The steps listed in ``directory`` (committed ones): what a run resuming sees."""
    if not directory.exists():
        return []
    with read_only_manager(directory) as mngr:
        return sorted(mngr.all_steps())


def resume_point(directory: Path) -> int:
    """The step a run resuming from the latest committed step of ``directory`` starts at
    (0 when nothing committed)."""
    return max(committed_steps(directory), default=0)


def log_step(
    log_file: IO[str],
    log: dict[str, Any],
    mngr: ocp.CheckpointManager,
    step: int,
    save_every: int,
    announce_save: int,
    composite: Any,
) -> None:
    """Logs a finished ``step`` and, every ``save_every`` steps, starts the async save of
    ``composite()``; at ``announce_save`` the worker says so and waits to be killed."""
    log_file.write(json.dumps(log) + "\n")
    log_file.flush()
    if step % save_every:
        return
    mngr.save(step, args=composite())
    if step == announce_save:
        wait_to_be_killed(f"saving {step}")
