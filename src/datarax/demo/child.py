"""A worker process of the demo, in a process group of its own, killed with it on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping

CHILD_TIMEOUT_S = 600.0
"""How long a child run may take before the harness kills it and fails."""


class DemoError(RuntimeError):
    """A run of the demo did not go as the scenario needs (a child failed, hung, ...)."""


class Child:
    """A worker process in a process group of its own, killed with its group on exit.

    Args:
        args: the worker's command-line arguments.
        env: its environment.
        timeout: seconds after which the group is killed (the run then fails).
    """

    def __init__(self, args: list[str], env: Mapping[str, str], timeout: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "datarax.demo.worker", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env),
            start_new_session=True,
        )
        self.timed_out = False
        self.output: list[str] = []
        self._timer = threading.Timer(timeout, self._time_out)
        self._timer.daemon = True
        self._timer.start()

    def _time_out(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        """SIGKILLs the child and every process it started."""
        # Until the child is reaped its pid, and so its group id, cannot be reused: never
        # signal a group id that might by now belong to someone else.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # the group is already gone
                os.killpg(self.proc.pid, signal.SIGKILL)

    def lines(self) -> Iterator[str]:
        """The child's output lines (stdout and stderr), until it exits."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            yield line

    def wait(self) -> int:
        """Waits for the child; its return code (``-9`` when SIGKILLed)."""
        for _ in self.lines():
            pass
        return self.proc.wait()

    def failure(self, what: str) -> DemoError:
        """An error about ``what`` went wrong, with the end of the child's output."""
        why = "timed out" if self.timed_out else f"exited with {self.proc.returncode}"
        tail = "\n".join(self.output[-30:])
        return DemoError(f"{what}: the child process {why}. Its output ended with:\n{tail}")

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
