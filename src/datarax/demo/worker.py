"""A training run in its own process: ``python -m datarax.demo.worker``.

The demo's harness starts this as a child process. Besides human-readable progress lines,
the worker writes protocol lines for the harness to stdout, each starting with
:data:`PROTOCOL`: ``start STEP`` once it knows where it starts, and, for the step named by
``--announce-save``, ``saving STEP`` right after ``CheckpointManager.save`` has returned
(its writes still in flight). After that announcement the worker waits to be killed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROTOCOL = "@datarax "
"""Prefix of the lines the worker writes for the harness."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m datarax.demo.worker",
        description="One training run of the datarax demo (started by the demo's harness).",
    )
    parser.add_argument("--config", required=True, help="the RunConfig, as JSON")
    parser.add_argument("--log", required=True, type=Path, help="JSON-lines step log to write")
    parser.add_argument("--checkpoints", type=Path, help="the CheckpointManager directory")
    parser.add_argument("--resume", action="store_true", help="restore the latest checkpoint")
    parser.add_argument(
        "--announce-save",
        type=int,
        metavar="STEP",
        help="after save(STEP) returns, say so on stdout and wait to be killed",
    )
    parser.add_argument("--progress-every", type=int, default=10, metavar="N")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from datarax.demo.environment import configure

    configure()
    from datarax.demo.training import RunConfig, run

    config = RunConfig.from_json(args.config)

    def on_start(step: int) -> None:
        print(f"{PROTOCOL}start {step}", flush=True)

    def on_save(step: int) -> None:
        if step == args.announce_save:
            print(f"{PROTOCOL}saving {step}", flush=True)
            # Stop here so that the kill lands while this save is in flight, not in a later
            # save() that first waits for this one to finish.
            while True:
                time.sleep(3600)

    logs = run(
        config,
        args.log,
        checkpoints=args.checkpoints,
        resume=args.resume,
        on_start=on_start,
        on_save=on_save,
    )
    for log in logs:
        if (log.step + 1) % args.progress_every == 0 or log.step + 1 == config.steps:
            print(f"step {log.step + 1:4d}/{config.steps}  loss {log.loss:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
