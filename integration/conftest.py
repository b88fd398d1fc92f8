"""Fixtures of the integration suite: real child processes, always cleaned up.

Every process a test starts goes through the ``processes`` fixture, which puts it in a
process group of its own and SIGKILLs that group when the test ends, whether it passed,
failed or timed out, so no run outlives its test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from datarax.demo.environment import deterministic_env

WORKERS = Path(__file__).parent / "workers"
"""The scripts that integration tests run as child processes."""


class Process:
    """A child process whose output (stdout and stderr) is collected by a thread.

    Args:
        argv: the command line.
        env: the environment.
        cwd: the working directory.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path | None) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        self.popen.stdout.close()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the process wrote so far."""
        with self._changed:
            return "\n".join(self.lines)

    def send(self, line: str) -> None:
        """Writes ``line`` and a newline to the process's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def wait_for_line(
        self, line: str, timeout: float, *, since: int = 0, prefix: bool = False
    ) -> str:
        """Waits until the process writes ``line`` (or, with ``prefix``, a line starting
        with it) as its line number ``since`` or later, and returns that line; fails the
        test if the process exits or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout

        def found() -> str | None:
            for written in self.lines[since:]:
                if written == line or (prefix and written.startswith(line)):
                    return written
            return None

        with self._changed:
            while (written := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    why = "timed out" if left <= 0 else f"exited ({self.popen.poll()})"
                    pytest.fail(
                        f"waiting for {line!r}, the process {why}: {self.argv}\n{self.output}"
                    )
                self._changed.wait(min(left, 0.5))
            return written

    def wait(self, timeout: float) -> int:
        """Waits for the process to exit (and its output to be read); its return code.
        Fails the test if that takes over ``timeout`` seconds."""
        try:
            returncode = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"timed out after {timeout} s: {self.argv}\n{self.output}")
        self._reader.join(timeout=10)
        return returncode

    def kill(self) -> None:
        """SIGKILLs the process and everything it started (its process group)."""
        # Until the child is reaped its pid, and so its group id, cannot be reused: never
        # signal a group id that might by now belong to someone else.
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # the group is already gone
                os.killpg(self.popen.pid, signal.SIGKILL)


class Processes:
    """Starts child processes and kills them all at the end of the test."""

    def __init__(self) -> None:
        self.started: list[Process] = []
        self.env = deterministic_env()
        self.env["JAX_PLATFORMS"] = "cpu"  # don't probe for accelerators in every child
        self.env.pop("JAX_COORDINATOR_ADDRESS", None)

    def start(self, argv: Sequence[str], cwd: Path | None = None) -> Process:
        """Starts ``argv`` (a command line) in a process group of its own."""
        process = Process(argv, self.env, cwd)
        self.started.append(process)
        return process

    def python(self, *args: str | Path) -> Process:
        """Starts this interpreter with ``args``."""
        return self.start([sys.executable, *map(str, args)])

    def worker(self, name: str, *args: str | Path) -> Process:
        """Starts ``integration/workers/<name>.py`` with ``args``."""
        return self.python(WORKERS / f"{name}.py", *args)

    def kill_all(self) -> None:
        """SIGKILLs every process group started, then reaps them."""
        for process in self.started:
            process.kill()
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)
            process._reader.join(timeout=10)  # EOF once the group is dead
            if process.popen.stdin is not None:
                with contextlib.suppress(OSError):  # the pipe's reader is gone
                    process.popen.stdin.close()


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
