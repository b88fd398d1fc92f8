"""Child processes to kill mid-save: the demo's and the integration tests' one helper.

A :class:`Process` runs in a process group of its own, a thread collecting its output lines;
:meth:`~Process.kill` SIGKILLs the whole group, and leaving its ``with`` block (or
:meth:`~Process.close`) always kills and reaps it. :func:`wait_to_be_killed` is the child's
side of the protocol, :func:`read_jsonl` reads the log that a killed child left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

# No reassociated float arithmetic on CPU, no GPU reduction whose result depends on atomics.
XLA_FLAGS = ("--xla_cpu_enable_fast_math=false", "--xla_gpu_deterministic_ops=true")


def deterministic_env() -> dict[str, str]:
    """This process's environment, with the ``XLA_FLAGS`` under which runs compare bit for bit."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return {**os.environ, "XLA_FLAGS": " ".join(flags + [f for f in XLA_FLAGS if f not in flags])}


class ProcessError(RuntimeError):
    """A child process exited, or timed out, before doing what was waited for."""


class Process:
    """``argv`` run in a new process group (``env``: default this process's), its stdout and
    stderr read into :attr:`lines` by a thread."""

    def __init__(self, argv: Sequence[object], env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:  # fmt: skip
        self.argv = [str(arg) for arg in argv]
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, cwd=cwd, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout or ():
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the process wrote so far."""
        with self._changed:
            return "\n".join(self.lines)

    def error(self, what: str, timed_out: bool = False) -> ProcessError:
        """An error: ``what`` went wrong, how the process ended, and its last output lines."""
        why = "timed out" if timed_out else f"exited with {self.popen.poll()}"
        tail = "\n".join(self.lines[-40:])
        return ProcessError(f"{what}: the child process {why} ({self.argv}). Its output:\n{tail}")

    def follow(self, timeout: float, since: int = 0) -> Iterator[str]:
        """The lines from number ``since`` on, as they come, until the output ends;
        :class:`ProcessError` once ``timeout`` seconds have passed."""
        deadline, i = time.monotonic() + timeout, since
        while True:
            with self._changed:
                while i == len(self.lines) and not self._ended:
                    if (left := deadline - time.monotonic()) <= 0:
                        raise self.error(f"After {timeout} s", timed_out=True)
                    self._changed.wait(left)
                if i == len(self.lines):
                    return
                line = self.lines[i]
            i += 1
            yield line

    def wait_for_line(self, line: str, timeout: float, *, since: int = 0,
                      prefix: bool = False) -> str:  # fmt: skip
        """The first line from number ``since`` on that is ``line`` (with ``prefix``: starts
        with it); :class:`ProcessError` if the output ends or ``timeout`` s pass first."""
        for written in self.follow(timeout, since):
            if written == line or (prefix and written.startswith(line)):
                return written
        raise self.error(f"Waiting for {line!r}")

    def send(self, line: str) -> None:
        """Writes ``line`` and a newline to the process's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def wait(self, timeout: float) -> int:
        """The return code (``-9`` after SIGKILL) once the process exited and its output was
        read; past ``timeout`` s, kills the group and raises :class:`ProcessError`."""
        try:
            returncode = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self.error(f"After {timeout} s", timed_out=True) from None
        self._reader.join(timeout=10)
        return returncode

    def kill(self) -> None:
        """SIGKILLs the process and everything it started (its process group)."""
        # Until the child is reaped its pid, and so its group id, cannot be reused: never
        # signal a group id that might by now belong to someone else.
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # the group is already gone
                os.killpg(self.popen.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kills the process group, reaps the process and closes its pipes."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._reader.join(timeout=10)  # EOF once the group is dead
        for pipe in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):  # stdin's reader is gone
                pipe and pipe.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_to_be_killed(announcement: str) -> NoReturn:
    """The child's side: writes ``announcement`` (say, of a save in flight) and sleeps until
    killed, so that the kill lands during that save, not in a later ``save`` waiting for it."""
    print(announcement, flush=True)
    while True:
        time.sleep(3600)


def read_jsonl(path: Path) -> dict[int, dict[str, Any]]:
    """The JSON lines of ``path`` by their ``"step"``; a last line that a kill cut short is
    ignored, another line that is not JSON is a ``ValueError`` naming it."""
    lines = path.read_text().split("\n") if path.exists() else []
    logs = {}
    for number, line in enumerate(lines):
        try:
            log = json.loads(line) if line else None
        except json.JSONDecodeError:
            if number == len(lines) - 1:  # a write the kill interrupted: no newline yet
                break
            raise ValueError(f"{path}, line {number + 1}: not JSON: {line[:80]!r}") from None
        if log is not None:
            logs[log["step"]] = log
    return logs
