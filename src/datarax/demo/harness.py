"""The demo's scenario: a reference run, a run killed mid-save, its resumption, the verdict.

1. The reference run trains ``config.steps`` steps in this process, never stopping.
2. The same run trains in a child process (``python -m datarax.demo.worker``), saving a
   checkpoint every ``config.save_every`` steps; right after ``save(kill_at)`` returns, with
   that async save still writing, the harness kills the child's process group with SIGKILL.
3. A fresh child resumes from the latest committed checkpoint (or from scratch, if none had
   committed) and trains to the end.
4. The steps of the killed run before the resumption point and those of the resumed run
   after it must equal the reference's: every record's index, epoch, global_step,
   batch_idx, record key and rng key data, and every loss as a float32 bit pattern.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import orbax.checkpoint as ocp

from datarax.demo.child import CHILD_TIMEOUT_S, Child, DemoError
from datarax.demo.training import RunConfig, StepLog, read_log, run
from datarax.demo.worker import PROTOCOL


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo found.

    Attributes:
        config: the run.
        kill_at: the step whose async save was in flight when the child was killed.
        kill_step_committed: whether that save had nonetheless committed.
        resumed_from: the step the resumed run restored (0: no checkpoint, from scratch).
        records_match: every step's records equal the reference's.
        losses_match: every step's loss has the reference's float32 bits.
        mismatches: the differences found, first ones first.
        directory: the run directory.
        plot: the PNG of the loss curves, if one was written.
    """

    config: RunConfig
    kill_at: int
    kill_step_committed: bool
    resumed_from: int
    records_match: bool
    losses_match: bool
    mismatches: tuple[str, ...]
    directory: Path
    plot: Path | None

    @property
    def ok(self) -> bool:
        """The resumed run matches the reference bit for bit."""
        return self.records_match and self.losses_match


def compare(
    reference: Mapping[int, StepLog], runs: Mapping[str, Mapping[int, StepLog]], steps: int
) -> tuple[bool, bool, list[str]]:
    """Compares the step logs of ``runs`` with the reference; ``runs`` must together cover
    steps ``0..steps-1``. Returns (records match, losses match, mismatches)."""
    mismatches = []
    records_match = losses_match = True
    covered = set()
    for name, logs in runs.items():
        for step, log in sorted(logs.items()):
            covered.add(step)
            ref = reference.get(step)
            if ref is None:
                records_match = False
                mismatches.append(f"{name}: step {step} is not in the reference")
                continue
            if log.records() != ref.records():
                records_match = False
                fields = [k for k, v in log.records().items() if v != ref.records()[k]]
                mismatches.append(f"{name}: step {step}: records differ in {', '.join(fields)}")
            if log.loss_bits != ref.loss_bits:
                losses_match = False
                mismatches.append(
                    f"{name}: step {step}: loss {log.loss!r} (bits {log.loss_bits:#010x}), "
                    f"reference {ref.loss!r} (bits {ref.loss_bits:#010x})"
                )
    missing = sorted(set(range(steps)) - covered)
    if missing:
        records_match = losses_match = False
        mismatches.append(f"steps {missing[:5]}{'...' if len(missing) > 5 else ''} never ran")
    return records_match, losses_match, mismatches


def prepare_directory(directory: Path) -> Path:
    """Creates ``directory`` if needed; refuses one that is not empty, whose checkpoints
    would otherwise be resumed from."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise DemoError(f"{directory} is not empty; give the demo a new or empty directory.")
    return directory


def run_demo(
    config: RunConfig,
    kill_at: int,
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    say: Callable[[str], None] = print,
    progress_every: int = 10,
    timeout: float = CHILD_TIMEOUT_S,
) -> DemoResult:
    """Runs the scenario of this module in ``directory`` (new or empty).

    Args:
        config: the run.
        kill_at: a checkpoint step (a multiple of ``config.save_every``) below
            ``config.steps``; the child is killed while that step's save is in flight.
        directory: where the logs, the checkpoints and the figure go.
        env: the children's environment (default: this process's).
        say: where progress and findings are written.
        progress_every: steps between progress lines.
        timeout: seconds each child may run.

    Returns:
        What the demo found; see :class:`DemoResult`.

    Raises:
        ValueError: ``kill_at`` is not a checkpoint step below ``config.steps``.
        DemoError: a child failed, hung, or was not killed as planned.
    """
    if not (0 < kill_at < config.steps and kill_at % config.save_every == 0):
        raise ValueError(
            f"kill_at must be a checkpoint step (a multiple of save_every={config.save_every}) "
            f"between 1 and steps-1={config.steps - 1}, got {kill_at}."
        )
    prepare_directory(directory)
    env = dict(os.environ if env is None else env)
    checkpoints = directory / "checkpoints"
    worker_args = ["--config", config.to_json(), "--progress-every", str(progress_every)]

    say(f"[reference] training {config.steps} steps, uninterrupted, in this process")
    for log in run(config, directory / "reference.jsonl"):
        if (log.step + 1) % progress_every == 0 or log.step + 1 == config.steps:
            say(f"[reference] step {log.step + 1:4d}/{config.steps}  loss {log.loss:.6f}")

    say(f"[killed]    same run in a child process, SIGKILL during the save of step {kill_at}")
    args = [*worker_args, "--log", str(directory / "killed.jsonl")]
    args += ["--checkpoints", str(checkpoints), "--announce-save", str(kill_at)]
    with Child(args, env, timeout) as child:
        announced = False
        for line in child.lines():
            if line == f"{PROTOCOL}saving {kill_at}":
                child.kill()
                announced = True
            elif not line.startswith(PROTOCOL):
                say(f"[killed]    {line}")
        if child.wait() != -signal.SIGKILL or not announced or child.timed_out:
            raise child.failure(f"The run to be killed at step {kill_at} did not get there")
    committed = ocp.path.step.checkpoint_steps(checkpoints) if checkpoints.exists() else []
    unfinished = ocp.path.step.tmp_checkpoints(checkpoints) if checkpoints.exists() else []
    kill_step_committed = kill_at in committed
    say(
        f"[killed]    killed; committed checkpoints: {sorted(committed) or 'none'}; "
        f"the save of step {kill_at} {'had' if kill_step_committed else 'had not'} committed"
        + (f" (left unfinished: {', '.join(sorted(unfinished))})" if unfinished else "")
    )

    args = [*worker_args, "--log", str(directory / "resumed.jsonl")]
    args += ["--checkpoints", str(checkpoints), "--resume"]
    resumed_from = None
    with Child(args, env, timeout) as child:
        for line in child.lines():
            if line.startswith(f"{PROTOCOL}start "):
                resumed_from = int(line.split()[-1])
                source = f"checkpoint {resumed_from}" if resumed_from else "scratch (no checkpoint)"
                say(f"[resumed]   fresh child process, restored from {source}")
            elif not line.startswith(PROTOCOL):
                say(f"[resumed]   {line}")
        if child.wait() != 0 or resumed_from is None:
            raise child.failure("The resumed run failed")

    reference = read_log(directory / "reference.jsonl")
    killed = read_log(directory / "killed.jsonl")
    resumed = read_log(directory / "resumed.jsonl")
    records_match, losses_match, mismatches = compare(
        reference,
        {
            "killed run": {s: log for s, log in killed.items() if s < resumed_from},
            "resumed run": resumed,
        },
        config.steps,
    )
    plot = None
    try:
        from datarax.demo.plot import plot_losses
    except ImportError as error:  # matplotlib is in the `demo` extra
        say(f"(no figure: {error}; install datarax-metadata[demo])")
    else:
        plot = plot_losses(
            directory / "loss_curves.png",
            reference,
            killed,
            resumed,
            kill_at=kill_at,
            resumed_from=resumed_from,
        )
    return DemoResult(
        config=config,
        kill_at=kill_at,
        kill_step_committed=kill_step_committed,
        resumed_from=resumed_from,
        records_match=records_match,
        losses_match=losses_match,
        mismatches=tuple(mismatches),
        directory=directory,
        plot=plot,
    )


def report(result: DemoResult) -> str:
    """The demo's closing table."""
    config = result.config
    fate = "committed before the kill" if result.kill_step_committed else "never committed"
    source = (
        f"{result.resumed_from} (latest committed checkpoint)"
        if result.resumed_from
        else "0 (no checkpoint had committed: from scratch)"
    )
    records = f"{config.steps} steps x {config.batch_size} records"
    rows = [
        ("steps", str(config.steps)),
        ("checkpoint", f"every {config.save_every} steps: model + optimizer + MetadataManager"),
        ("killed at step", f"{result.kill_at} (SIGKILL mid async save; that save {fate})"),
        ("resumed from step", source),
        (
            "records match",
            f"{'yes' if result.records_match else 'NO'}: {records} "
            "(index, epoch, global_step, batch_idx, record key, rng key data)",
        ),
        (
            "losses match",
            f"{'yes' if result.losses_match else 'NO'}: {config.steps} float32 losses, bit for bit",
        ),
    ]
    if result.plot is not None:
        rows.append(("loss curves", str(result.plot)))
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    lines += [f"  mismatch: {m}" for m in result.mismatches[:10]]
    return "\n".join(lines)
