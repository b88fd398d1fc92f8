"""Grain alongside: a Grain iterator and a MetadataManager checkpointed in one Composite.

The worker's pipeline is killed with SIGKILL while an async save is in flight, twice, and
resumed from the latest checkpoint each time; both streams, Grain's elements and the
records' metadata, continue exactly as in an uninterrupted run computed here. Whether the
save in flight committed before the kill is up to the machine's timing: each attempt must
start from the latest step committed when the one before was killed, read after the kill.
"""

from __future__ import annotations

import pytest

from integration.workers.grain_pipeline import pipeline
from integration.workers.streams import (
    one_record_log,
    resume_point,
    resumed_logs,
    shard_manager,
)

RECORDS, SIZE, SAVE_EVERY, SEED = 40, 7, 5, 11


def reference() -> dict[int, dict]:
    iterator = pipeline(SIZE, SEED)
    manager = shard_manager(SEED, None)
    logs = {}
    for step in range(RECORDS):
        if step and step % SIZE == 0:
            manager.next_epoch()
        element = next(iterator)
        record = manager.create_metadata(record_key=element["id"])
        logs[step] = {"step": step, "element": element, **one_record_log(record)}
    return logs


@pytest.mark.timeout(180)
def test_grain_and_metadata_streams_resume_exactly(processes, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    common = ["--checkpoints", checkpoints, "--records", str(RECORDS)]
    common += ["--dataset-size", str(SIZE), "--save-every", str(SAVE_EVERY), "--seed", str(SEED)]
    attempts, starts_at = [], 0
    for attempt, kill_at in enumerate([15, 30]):
        attempts.append(tmp_path / f"attempt-{attempt}.jsonl")
        extra = ["--resume"] if attempt else []
        extra += ["--log", attempts[-1], "--announce-save", str(kill_at)]
        run = processes.worker("grain_pipeline", *common, *extra)
        run.wait_for_line(f"saving {kill_at}", timeout=90)
        run.kill()
        assert run.wait(timeout=30) == -9
        assert f"start {starts_at}" in run.lines, run.output
        # save(kill_at) returned once the save before it had committed; its own may have too.
        starts_at = resume_point(checkpoints)
        assert starts_at in (kill_at - SAVE_EVERY, kill_at)
    attempts.append(tmp_path / "final.jsonl")
    run = processes.worker("grain_pipeline", *common, "--log", attempts[-1], "--resume")
    assert run.wait(timeout=90) == 0, run.output
    assert f"start {starts_at}" in run.lines, run.output

    stream = resumed_logs(attempts)
    expected = reference()
    assert sorted(stream) == list(range(RECORDS))
    for step in range(RECORDS):
        assert stream[step] == expected[step], f"record {step}"
    # Grain really reshuffled each epoch, and the manager counted the epochs.
    ids = [expected[s]["element"]["id"] for s in range(RECORDS)]
    epochs = [ids[:SIZE], ids[SIZE : 2 * SIZE]]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(SIZE)) and epochs[0] != epochs[1]
    assert expected[RECORDS - 1]["epoch"] == (RECORDS - 1) // SIZE
