"""A training run killed with SIGKILL during async saves, again and again, loses nothing.

The demo's training (a Flax NNX MLP with optax; model, optimizer state and MetadataManager
in one Composite) runs in ``python -m examples.demo --run LOG`` processes. Each attempt is
killed while the async save of a later step is in flight and the next attempt restarts from
the latest committed checkpoint; every step every attempt logged, the steps an attempt
redid after the next one's restart point included, equals an uninterrupted run's bit for
bit. Whether the save in flight committed before the kill depends on the machine's timing:
the step each attempt must restart from is read from the checkpoint directory after the
kill before it.
"""

from __future__ import annotations

import pytest

from examples.demo.processes import read_jsonl
from integration.workers.streams import resume_point

STEPS, SEED, SAVE_EVERY = 30, 3, 5
KILLS = [10, 20, 25]  # the saves during which the attempts are killed


@pytest.mark.timeout(200)
def test_killed_three_times_then_finished_matches_uninterrupted_run(processes, tmp_path):
    def attempt(log: str, *args: object):
        return processes.python(
            "-m", "examples.demo", "--steps", STEPS, "--seed", SEED, "--save-every", SAVE_EVERY,
            "--run", tmp_path / log, *args,
        )  # fmt: skip

    reference = attempt("reference.jsonl")  # no checkpoints: it never stops
    assert reference.wait(timeout=90) == 0, reference.output

    checkpoints = ["--checkpoints", tmp_path / "checkpoints"]
    logs, starts = [], [0]
    for i, kill_at in enumerate(KILLS):
        logs.append(f"attempt-{i}.jsonl")
        run = attempt(logs[-1], *checkpoints, "--announce-save", kill_at)
        run.wait_for_line(f"@datarax saving {kill_at}", timeout=90)
        run.kill()
        assert run.wait(timeout=30) == -9
        assert f"@datarax start {starts[-1]}" in run.lines, run.output
        # save(kill_at) returned once the save before it had committed; its own may have too.
        starts.append(resume_point(tmp_path / "checkpoints"))
        assert starts[-1] in (kill_at - SAVE_EVERY, kill_at)
    logs.append("final.jsonl")
    final = attempt(logs[-1], *checkpoints)
    assert final.wait(timeout=90) == 0, final.output
    assert f"@datarax start {starts[-1]}" in final.lines, final.output

    expected = read_jsonl(tmp_path / "reference.jsonl")
    assert sorted(expected) == list(range(STEPS))
    for log, start, end in zip(logs, starts, [*starts[1:], STEPS], strict=True):
        run = read_jsonl(tmp_path / log)
        # Each attempt ran from its restart point up to at least the next one's.
        assert min(run) == start and max(run) >= end - 1, (log, sorted(run))
        for step in run:
            assert run[step] == expected[step], f"step {step} of {log} (from step {start})"
