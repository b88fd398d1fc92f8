"""A training run killed with SIGKILL during async saves, again and again, loses nothing.

The demo's training (a Flax NNX MLP with optax; model, optimizer state and MetadataManager
in one Composite) runs in ``python -m datarax.demo.worker`` processes. Each attempt is
killed while the async save of a later step is in flight and the next attempt restarts from
the latest committed checkpoint; the stream of records and losses, stitched from the
attempts, equals an uninterrupted run's bit for bit. Whether the save in flight committed
before the kill depends on the machine's timing: the step each attempt must restart from is
read from the checkpoint directory after the kill before it.
"""

from __future__ import annotations

import pytest

from datarax.demo.training import RunConfig, read_log
from integration.workers.streams import resume_point

CONFIG = RunConfig(steps=30, seed=3, save_every=5)
KILLS = [10, 20, 25]  # the saves during which the attempts are killed


@pytest.mark.timeout(200)
def test_killed_three_times_then_finished_matches_uninterrupted_run(processes, tmp_path):
    def worker(log: str, *args: object):
        return processes.python(
            "-m", "datarax.demo.worker", "--config", CONFIG.to_json(),
            "--log", tmp_path / log, "--progress-every", "1000", *args,
        )  # fmt: skip

    reference = worker("reference.jsonl")  # no checkpoints: it never stops
    assert reference.wait(timeout=90) == 0, reference.output

    checkpoints = ["--checkpoints", tmp_path / "checkpoints"]
    logs, starts = [], [0]
    for attempt, kill_at in enumerate(KILLS):
        logs.append(f"attempt-{attempt}.jsonl")
        resume = ["--resume"] if attempt else []
        run = worker(logs[-1], *checkpoints, *resume, "--announce-save", kill_at)
        run.wait_for_line(f"@datarax saving {kill_at}", timeout=90)
        run.kill()
        assert run.wait(timeout=30) == -9
        assert f"@datarax start {starts[-1]}" in run.lines, run.output
        # save(kill_at) returned once the save before it had committed; its own may have too.
        starts.append(resume_point(tmp_path / "checkpoints"))
        assert starts[-1] in (kill_at - CONFIG.save_every, kill_at)
    logs.append("final.jsonl")
    final = worker(logs[-1], *checkpoints, "--resume")
    assert final.wait(timeout=90) == 0, final.output
    assert f"@datarax start {starts[-1]}" in final.lines, final.output

    expected = read_log(tmp_path / "reference.jsonl")
    assert sorted(expected) == list(range(CONFIG.steps))
    runs = [read_log(tmp_path / log) for log in logs]
    for run, start, end in zip(runs, starts, [*starts[1:], CONFIG.steps], strict=True):
        assert min(run) == start
        for step in range(start, end):
            assert run[step] == expected[step], f"step {step} (attempt from {start})"
        # Steps an attempt did past the next one's restart point were redone identically.
        for step in run:
            assert run[step] == expected[step], f"step {step} (attempt from {start})"
