"""The demo's scenario: a reference run in this process; the same run in a child process,
its process group SIGKILLed right after ``save(kill_at)`` returned (that async save still
writing); a fresh child resuming from the latest committed checkpoint (from scratch if none
committed). The runs must match the reference: every record's fields and rng key data, and
every loss as a float32 bit pattern.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import orbax.checkpoint as ocp

from examples.demo.processes import Process, read_jsonl
from examples.demo.training import BATCH, PROTOCOL, Logs, RunConfig, loss, run

CHILD_TIMEOUT_S = 600.0
say = functools.partial(print, flush=True)  # progress lines: at once


def relay(child: Process, tag: str) -> Iterator[str]:
    """The child's protocol lines (without :data:`PROTOCOL`); says its other lines."""
    for line in child.follow(CHILD_TIMEOUT_S):
        if line.startswith(PROTOCOL):
            yield line.removeprefix(PROTOCOL)
        else:
            say(f"{tag:<11} {line}")


def compare(reference: Logs, runs: Mapping[str, Logs], steps: int) -> tuple[bool, bool, list[str]]:
    """Compares the step logs of ``runs``, which must together cover steps ``0..steps-1``,
    with the reference's; returns (records match, losses match, the mismatches)."""
    records, losses = [], []
    for name, logs in runs.items():
        for step, log in sorted(logs.items()):
            if (ref := reference.get(step)) is None:
                records.append(f"{name}: step {step} is not in the reference")
                continue
            if fields := [k for k in log if k != "loss_bits" and log[k] != ref.get(k)]:
                records.append(f"{name}: step {step}: records differ in {', '.join(fields)}")
            if (bits := log["loss_bits"]) != ref["loss_bits"]:
                losses.append(
                    f"{name}: step {step}: loss {loss(log)!r} (bits {bits:#010x}), "
                    f"reference {loss(ref)!r} (bits {ref['loss_bits']:#010x})"
                )
    covered = {step for logs in runs.values() for step in logs}
    if missing := sorted(set(range(steps)) - covered):
        records.append(f"steps {missing[:5]}{'...' if len(missing) > 5 else ''} never ran")
    return not records, not (losses or missing), records + losses


def check_kill_at(config: RunConfig, kill_at: int) -> None:
    """Raises ``ValueError`` for a ``kill_at`` that is not a checkpoint step below
    ``config.steps``."""
    if not (0 < kill_at < config.steps and kill_at % config.save_every == 0):
        raise ValueError(
            f"kill_at must be a checkpoint step (a multiple of save_every={config.save_every}) "
            f"between 1 and steps-1={config.steps - 1}, got {kill_at}."
        )


def run_demo(config: RunConfig, kill_at: int, directory: Path) -> tuple[bool, str]:
    """Runs the scenario in ``directory`` (new or empty); returns whether the runs matched
    and the closing table. Raises ``ValueError`` for a bad ``kill_at`` (:func:`check_kill_at`),
    :class:`~examples.demo.processes.ProcessError` if a child fails or hangs."""
    check_kill_at(config, kill_at)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):  # its checkpoints would be resumed from
        raise ValueError(f"{directory} is not empty; give the demo a new or empty directory.")
    checkpoints = directory / "checkpoints"
    argv = [sys.executable, "-m", "examples.demo", "--steps", config.steps, "--seed", config.seed]
    argv += ["--save-every", config.save_every, "--checkpoints", checkpoints, "--run"]
    cwd = Path(__file__).parents[2]

    say(f"[reference] training {config.steps} steps, uninterrupted, in this process")
    run(config, directory / "reference.jsonl", tag="[reference] ")

    say(f"[killed]    same run in a child process, SIGKILL during the save of step {kill_at}")
    with Process([*argv, directory / "killed.jsonl", "--announce-save", kill_at], cwd=cwd) as child:
        announced = f"saving {kill_at}" in relay(child, "[killed]")  # reads up to it
        child.kill()
        if child.wait(30) != -signal.SIGKILL or not announced:
            raise child.error(f"The run to be killed at step {kill_at} did not get there")
    committed = ocp.path.step.checkpoint_steps(checkpoints)  # the child created the directory
    unfinished = ocp.path.step.tmp_checkpoints(checkpoints)
    say(
        f"[killed]    killed; committed checkpoints: {sorted(committed) or 'none'}; "
        f"the save of step {kill_at} {'had' if kill_at in committed else 'had not'} committed"
        + (f" (left unfinished: {', '.join(sorted(unfinished))})" if unfinished else "")
    )

    resumed_from = None
    with Process([*argv, directory / "resumed.jsonl"], cwd=cwd) as child:
        for line in relay(child, "[resumed]"):
            resumed_from = int(line.removeprefix("start "))  # the only line it announces
            source = f"checkpoint {resumed_from}" if resumed_from else "scratch (no checkpoint)"
            say(f"[resumed]   fresh child process, restored from {source}")
        if child.wait(30) != 0 or resumed_from is None:
            raise child.error("The resumed run failed")
    return verdict(config, kill_at, kill_at in committed, resumed_from, directory)


def verdict(
    config: RunConfig, kill_at: int, committed: bool, resumed_from: int, directory: Path
) -> tuple[bool, str]:
    """Compares the runs' logs and plots their losses; whether they matched, and the table."""
    from examples.demo.plot import plot_losses  # matplotlib: not in the children

    logs = {name: read_jsonl(directory / f"{name}.jsonl") for name in ("reference", "killed")}
    killed = {step: log for step, log in logs["killed"].items() if step < resumed_from}
    logs["resumed"] = read_jsonl(directory / "resumed.jsonl")
    runs = {"killed run": killed, "resumed run": logs["resumed"]}
    records, losses, mismatches = compare(logs["reference"], runs, config.steps)
    plot = directory / "loss_curves.png"
    plot_losses(plot, **logs, kill_at=kill_at, resumed_from=resumed_from)
    fate = "committed before the kill" if committed else "never committed"
    scratch = "no checkpoint had committed: from scratch"
    source = "latest committed checkpoint" if resumed_from else scratch
    fields = "(index, epoch, global_step, batch_idx, record key, rng key data)"
    rows = {
        "steps": str(config.steps),
        "checkpoint": f"every {config.save_every} steps: model + optimizer + MetadataManager",
        "killed at step": f"{kill_at} (SIGKILL mid async save; that save {fate})",
        "resumed from step": f"{resumed_from} ({source})",
        "records match": f"{'yes' if records else 'NO'}: {config.steps} steps x {BATCH} "
        f"records {fields}",
        "losses match": f"{'yes' if losses else 'NO'}: {config.steps} float32 losses, bit for bit",
        "loss curves": str(plot),
    }
    table = [f"  {name:<17}  {value}" for name, value in rows.items()]
    return records and losses, "\n".join(table + [f"  mismatch: {m}" for m in mismatches[:10]])
