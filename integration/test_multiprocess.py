"""Several ``jax.distributed`` processes on 127.0.0.1 (CPU, gloo) checkpointed together.

Each process has its own shard's ``MetadataManager``; one ``CheckpointManager`` saves all
of them with a global array sharded over the processes and the global batch's ``Metadata``
(its leaves global arrays, each process's shard its own records). All processes are SIGKILLed while
an async save is in flight, the job restarts with as many processes, and every process's
stream continues exactly; restarting with another process count is the clear
``MetadataCheckpointError`` naming both counts. Whether the save in flight committed before
the kill depends on the machine's timing: the step the job restarts from is read from the
checkpoint directory after the kill.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from integration.workers.streams import (
    next_batch,
    record_log,
    resume_point,
    resumed_logs,
    shard_manager,
)

STEPS, SAVE_EVERY, KILL_AT, BATCH, EPOCH_STEPS, SEED = 12, 3, 9, 4, 5, 100


def reference(process: int, count: int) -> dict[int, dict]:
    """Process ``process``'s stream of an uninterrupted ``count``-process job."""
    manager = shard_manager(SEED, process)
    logs = {}
    total = float(sum(range(4 * count)))  # the global array starts as arange(4 * count)
    for step in range(STEPS):
        total += 4 * count
        records = next_batch(manager, step, BATCH, EPOCH_STEPS)
        logs[step] = {"step": step, "total": total, **record_log(records)}
    return logs


def start_job(processes, free_port, count: int, directory: Path, attempt: str, *extra: str):
    coordinator = f"127.0.0.1:{free_port()}"
    return [
        processes.worker(
            "distributed",
            "--coordinator",
            coordinator,
            "--num-processes",
            str(count),
            "--process-id",
            str(i),
            "--checkpoints",
            directory / "checkpoints",
            "--log",
            directory / f"{attempt}-{i}.jsonl",
            "--steps",
            str(STEPS),
            "--save-every",
            str(SAVE_EVERY),
            "--batch",
            str(BATCH),
            "--epoch-steps",
            str(EPOCH_STEPS),
            "--seed",
            str(SEED),
            *extra,
        )
        for i in range(count)
    ]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("count", "other_count"), [(2, 3), (4, 2)])
def test_each_process_resumes_its_own_stream(processes, free_port, tmp_path, count, other_count):
    job = start_job(
        processes, free_port, count, tmp_path, "killed", "--announce-save", str(KILL_AT)
    )
    for process in job:
        process.wait_for_line(f"saving {KILL_AT}", timeout=150)
    for process in job:  # all at once, while the save of KILL_AT is in flight
        process.kill()
    for process in job:
        assert process.wait(timeout=30) == -9

    # save(KILL_AT) returned once the save before it had committed; its own may have too.
    resumed_from = resume_point(tmp_path / "checkpoints")
    assert resumed_from in (KILL_AT - SAVE_EVERY, KILL_AT)
    job = start_job(processes, free_port, count, tmp_path, "resumed", "--resume")
    for i, process in enumerate(job):
        assert process.wait(timeout=150) == 0, process.output
        assert f"start {resumed_from}" in process.lines, process.output
        assert "done" in process.lines
        # The global batch's Metadata saved at `resumed_from` holds, in this process's shard
        # of its global arrays, this process's records of the step before; with the
        # target's sharding.
        (line,) = [line for line in process.lines if line.startswith("batch ")]
        saved = reference(i, count)[resumed_from - 1]
        assert json.loads(line.removeprefix("batch ")) == {
            "index": saved["index"],
            "global_step": saved["global_step"],
            "rng_key": saved["rng_key"],
            "shard_id": 0,
            "sharding": True,
        }

    for i in range(count):
        stream = resumed_logs([tmp_path / f"killed-{i}.jsonl", tmp_path / f"resumed-{i}.jsonl"])
        expected = reference(i, count)
        assert sorted(stream) == list(range(STEPS))
        for step in range(STEPS):
            assert stream[step] == expected[step], f"process {i}, step {step}"
        assert {shard for log in stream.values() for shard in log["shard_id"]} == {i}

    # The checkpoint holds `count` processes' state: another count is refused, clearly.
    job = start_job(processes, free_port, other_count, tmp_path, "other", "--resume")
    for i, process in enumerate(job):
        assert process.wait(timeout=150) == 3, process.output
        (error,) = [line for line in process.lines if line.startswith("MetadataCheckpointError")]
        if i < count:
            assert f"saved by {count} process(es), restored by {other_count}" in error
        else:  # a process with no saved state of its own
            assert re.search(rf"documents of {count} process\(es\).*runs {other_count}", error)
