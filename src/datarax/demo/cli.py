"""Command line of the demo: ``python -m datarax.demo`` (or ``datarax-demo``)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

DESCRIPTION = """\
Trains a small Flax NNX MLP with optax on a synthetic dataset whose records get their
metadata (index, epoch, step, RNG key) from a datarax MetadataManager; each record's
augmentation is drawn from its own rng_key. An async Orbax CheckpointManager saves the
model, the optimizer state and the MetadataManager together every few steps.

The demo trains an uninterrupted reference run, then the same run in a child process that
it kills with SIGKILL while an async save is in flight, then resumes that run in a fresh
process from the latest checkpoint. It prints whether the resumed run's records and losses
match the reference bit for bit (exit status 0 if they do, 1 if not), and writes a PNG of
the loss curves to the run directory."""


def default_kill_at(steps: int, save_every: int) -> int:
    """The checkpoint step nearest to 55% of the run (one exists below ``steps``)."""
    last = (steps - 1) // save_every * save_every
    return min(max(save_every, round(0.55 * steps / save_every) * save_every), last)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m datarax.demo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--steps", type=int, default=60, metavar="N", help="training steps of the run (60)"
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=5,
        metavar="N",
        help="steps between checkpoints (5)",
    )
    p.add_argument(
        "--kill-at",
        type=int,
        metavar="STEP",
        help="kill the child during the async save of checkpoint STEP (a multiple of "
        "--save-every, below --steps); with STEP = --save-every no checkpoint has committed "
        "yet and the run resumes from scratch (default: the checkpoint step nearest to 55%% "
        "of the run)",
    )
    p.add_argument(
        "--directory",
        type=Path,
        metavar="DIR",
        help="new or empty directory for the checkpoints, step logs and the loss-curve PNG "
        "(default: a fresh temporary directory, kept and printed)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the dataset, the shuffling, the parameters and the records' keys (0)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the demo; returns the exit status (0: bit-exact, 1: mismatch, 2: error)."""
    args = parser().parse_args(argv)
    # Before JAX starts: this process and its children must compile identical programs.
    from datarax.demo.environment import configure

    env = configure()
    from datarax.demo.child import DemoError
    from datarax.demo.harness import report, run_demo
    from datarax.demo.training import RunConfig

    try:
        config = RunConfig(steps=args.steps, seed=args.seed, save_every=args.save_every)
        if config.steps <= config.save_every:
            raise ValueError(
                f"--steps ({config.steps}) must exceed --save-every ({config.save_every}), "
                "so that there is a checkpoint to be killed during."
            )
        kill_at = args.kill_at
        if kill_at is None:
            kill_at = default_kill_at(config.steps, config.save_every)
        directory = args.directory or Path(tempfile.mkdtemp(prefix="datarax-demo-"))
        print(f"datarax demo: run directory {directory}", flush=True)
        start = time.perf_counter()
        result = run_demo(config, kill_at, directory, env=env, say=_say)
    except (ValueError, DemoError) as error:
        print(f"datarax demo: error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    verdict = "MATCH, bit for bit" if result.ok else "MISMATCH"
    print(f"\ndatarax demo: {verdict} ({elapsed:.1f} s)\n{report(result)}", flush=True)
    return 0 if result.ok else 1


def _say(line: str) -> None:
    print(line, flush=True)
