"""``python -m examples.demo``: the demo's command line (``--help``). The integration tests
use it, ``scenario.compare`` and :mod:`~examples.demo.processes`, nothing else of the demo."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import examples.demo
from examples.demo.processes import ProcessError, deterministic_env

KILL_AT = """kill the child during the async save of checkpoint STEP (a multiple of
--save-every, below --steps); with STEP = --save-every no checkpoint has committed yet and
the run resumes from scratch (default: the checkpoint step nearest to 55%% of the run)"""
DIRECTORY = """new or empty directory for the checkpoints, step logs and the loss-curve PNG
(default: a fresh temporary directory, kept and printed)"""
OPTIONS = {
    "--steps": dict(type=int, default=60, metavar="N", help="training steps of the run (60)"),
    "--save-every": dict(type=int, default=5, metavar="N", help="steps between checkpoints (5)"),
    "--kill-at": dict(type=int, metavar="STEP", help=KILL_AT),
    "--directory": dict(type=Path, metavar="DIR", help=DIRECTORY),
    "--seed": dict(type=int, default=0, help="seeds the data, parameters and records' keys (0)"),
}
CHILD_OPTIONS = {  # one run instead of the demo: how the demo (and the tests) start children
    "--run": dict(type=Path, metavar="LOG", help="train, writing the step log LOG"),
    "--checkpoints": dict(type=Path, metavar="DIR", help="resume from the latest one, save there"),
    "--announce-save": dict(type=int, metavar="STEP", help="after save(STEP), wait to be killed"),
}
INSTALL = "the demo needs the `demo` extra: pip install -e '.[demo]' (or run `make demo`)"


def main(argv: list[str] | None = None) -> int:
    """Runs the demo; returns the exit status (0: bit-exact, 1: mismatch, 2: error)."""
    p = argparse.ArgumentParser(
        "python -m examples.demo",
        description=examples.demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    child = p.add_argument_group("one run instead of the demo (the demo's child processes)")
    for group, options in ((p, OPTIONS), (child, CHILD_OPTIONS)):
        for name, kwargs in options.items():
            group.add_argument(name, **kwargs)
    args = p.parse_args(argv)
    try:
        if missing := [m for m in ("optax", "matplotlib") if importlib.util.find_spec(m) is None]:
            raise ValueError(f"{' and '.join(missing)} not installed: {INSTALL}")
        # Before JAX starts: this process and its children must compile identical programs.
        os.environ["XLA_FLAGS"] = deterministic_env()["XLA_FLAGS"]
        from examples.demo.scenario import check_kill_at, run_demo
        from examples.demo.training import RunConfig, run

        config = RunConfig(steps=args.steps, seed=args.seed, save_every=args.save_every)
        if args.run is not None:
            run(config, args.run, args.checkpoints, args.announce_save)
            return 0
        steps, every = config.steps, config.save_every
        if steps <= every:
            raise ValueError(
                f"--steps ({steps}) must exceed --save-every ({every}), so that "
                "there is a checkpoint to be killed during."
            )
        nearest = min(max(every, round(0.55 * steps / every) * every), (steps - 1) // every * every)
        kill_at = nearest if args.kill_at is None else args.kill_at
        check_kill_at(config, kill_at)  # before a temporary directory is made
        directory = args.directory or Path(tempfile.mkdtemp(prefix="datarax-demo-"))
        print(f"datarax demo: run directory {directory}", flush=True)
        start = time.perf_counter()
        ok, table = run_demo(config, kill_at, directory)
    except (ValueError, ProcessError) as error:
        print(f"datarax demo: error: {error}", file=sys.stderr)
        return 2
    verdict = "MATCH, bit for bit" if ok else "MISMATCH"
    print(f"\ndatarax demo: {verdict} ({time.perf_counter() - start:.1f} s)\n{table}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
