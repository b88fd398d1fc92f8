"""The documentation's code runs, and the API pages cover every public name.

Each guide under ``docs/guides/`` is a script: its fenced ```` ```python ```` blocks are joined
in order and run in a fresh interpreter, in a temporary directory, with a time limit. A block
titled with a file name (```` ```python title="worker.py" ````) is that file: it is written
into the directory, for the page's other blocks to run, instead of being run inline. Blocks
fenced with another language (``bash``, ``text``) are shown, not run.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDES = sorted((DOCS / "guides").glob("*.md"))
API_PAGES = sorted((DOCS / "api").glob("*.md"))
PAGE_TIMEOUT_S = 150  # above the multi-process guide's own 60 s wait for its workers

# An opening fence of three or more backticks, the language `python` (optionally followed by
# attributes such as title="..."), the body, and a closing fence of the same backticks.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})python(?P<attrs>[ \t]+[^\n]*)?\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_FILE_TITLE = re.compile(r'title="(?P<name>[\w.-]+\.py)"')


class Block(NamedTuple):
    line: int  # the page line the code starts on
    code: str
    file: str | None  # the file name a titled block stands for, else None


def python_blocks(page: Path) -> list[Block]:
    """The ``python`` blocks of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        indent = len(match["indent"])
        code = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        title = _FILE_TITLE.search(match["attrs"] or "")
        line = text.count("\n", 0, match.start("body")) + 1
        blocks.append(Block(line, code, title["name"] if title else None))
    return blocks


def page_script(page: Path) -> str:
    """The page's inline blocks as one script; each block starts on its own line number in
    ``page`` so that a traceback points at the Markdown line that failed."""
    lines: list[str] = []
    for block in python_blocks(page):
        if block.file is None:
            lines.extend([""] * (block.line - 1 - len(lines)))
            lines.extend(block.code.splitlines())
    return "\n".join(lines) + "\n"


def test_python_blocks_found() -> None:
    # Guards the extractor itself: a regex that silently matches nothing would pass every page.
    assert GUIDES, "no guides under docs/guides"
    for page in GUIDES:
        blocks = python_blocks(page)
        assert any(b.file is None for b in blocks), f"{page.relative_to(ROOT)}: nothing to run"


SERVED_GUIDES = {"object-storage"}
"""Guides whose code writes to ``gs://`` and ``s3://``: they run against local servers."""


@pytest.fixture
def guide_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The variables a guide's code needs: for :data:`SERVED_GUIDES`, those of a
    fake-gcs-server and a moto server started (on 127.0.0.1) for the test, each with a bucket
    named ``datarax-guide``."""
    if request.node.callspec.params["page"].stem not in SERVED_GUIDES:
        yield {}
        return
    from integration.object_stores import FakeGcs, MotoS3  # the `emulators` extra

    logs = tmp_path_factory.mktemp("servers")
    with FakeGcs(logs) as gcs, MotoS3(logs) as s3:
        for server in (gcs, s3):
            server.create_bucket("datarax-guide")
        yield {**gcs.env(), **s3.env()}


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.stem)
def test_guide_runs(page: Path, tmp_path: Path, guide_env: dict[str, str]) -> None:
    for block in python_blocks(page):
        if block.file is not None:
            (tmp_path / block.file).write_text(block.code, encoding="utf-8")
    script = tmp_path / f"{page.stem}.py"
    script.write_text(page_script(page), encoding="utf-8")
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]  # ROOT: `benchmarks`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "JAX_PLATFORMS": "cpu"}
    env.update(guide_env)
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr
        pytest.fail(f"{page.relative_to(ROOT)} ran past {PAGE_TIMEOUT_S} s:\n{stderr}")
    # Line numbers in the traceback are the Markdown page's own.
    assert result.returncode == 0, (
        f"{page.relative_to(ROOT)} failed (line numbers are the page's):\n"
        f"{result.stderr.replace(str(script), str(page))}"
    )


def test_benchmark_plot_script_reads_the_page(tmp_path: Path) -> None:
    # The plot is drawn from docs/benchmarks.md's tables; a table it can no longer read is a
    # failure here, not a stale PNG.
    out = tmp_path / "benchmarks.png"
    result = subprocess.run(
        [sys.executable, str(DOCS / "scripts" / "plot_benchmarks.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def documented_names(module: str) -> set[str]:
    """Names ``X`` of every ``::: module.X`` directive on the API pages."""
    pattern = re.compile(rf"^:::[ \t]+{re.escape(module)}\.(\w+)[ \t]*$", re.MULTILINE)
    return {m[1] for page in API_PAGES for m in pattern.finditer(page.read_text("utf-8"))}


@pytest.mark.parametrize("module", ["datarax.core.metadata", "datarax.checkpoint"])
def test_api_pages_cover_all(module: str) -> None:
    # Like optax's coverage check: a public name missing from the reference is a failure.
    public = set(importlib.import_module(module).__all__)
    missing = public - documented_names(module)
    assert not missing, f"names in {module}.__all__ without a ::: block on docs/api/: {missing}"
    unknown = documented_names(module) - public
    assert not unknown, f"docs/api/ documents names not in {module}.__all__: {unknown}"
