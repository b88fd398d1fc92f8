"""Fixtures of the integration suite: real child processes, always cleaned up.

Every process a test starts goes through the ``processes`` fixture: a
:class:`~examples.demo.processes.Process` (the demo's own helper), in a process group of
its own, SIGKILLed with that group when the test ends, whether it passed, failed or timed
out, so no run outlives its test.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from examples.demo.processes import Process, deterministic_env

ROOT = Path(__file__).parents[1]
WORKERS = ROOT / "integration" / "workers"
"""The scripts that integration tests run as child processes."""


class Processes:
    """Starts child processes and kills them all at the end of the test."""

    def __init__(self) -> None:
        self.started: list[Process] = []
        self.env = deterministic_env()
        self.env["JAX_PLATFORMS"] = "cpu"  # don't probe for accelerators in every child
        self.env.pop("JAX_COORDINATOR_ADDRESS", None)

    def start(self, argv: Sequence[str | Path], cwd: Path = ROOT) -> Process:
        """Starts ``argv`` (a command line) in a process group of its own, in ``cwd`` (by
        default the repository's root, so that ``-m examples.demo`` finds the demo)."""
        process = Process(argv, self.env, cwd)
        self.started.append(process)
        return process

    def python(self, *args: str | Path) -> Process:
        """Starts this interpreter with ``args``."""
        return self.start([sys.executable, *args])

    def worker(self, name: str, *args: str | Path) -> Process:
        """Starts ``integration/workers/<name>.py`` with ``args``."""
        return self.python(WORKERS / f"{name}.py", *args)

    def kill_all(self) -> None:
        """SIGKILLs every process group started (all first), then reaps them."""
        for process in self.started:
            process.kill()
        for process in self.started:
            process.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Starts child processes; every one is SIGKILLed (with its group) at teardown."""
    tracker = Processes()
    try:
        yield tracker
    finally:
        tracker.kill_all()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns a function that finds a TCP port on 127.0.0.1 that is free right now."""

    def find() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return find
