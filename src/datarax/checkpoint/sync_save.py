"""Running a handler's ``async_save`` to completion now: the synchronous ``save``."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

import orbax.checkpoint as ocp


def run_now(save: Coroutine[Any, Any, list[ocp.future.Future]]) -> None:
    """Runs an ``async_save`` coroutine and waits for its commit futures, from any thread
    (inside a running event loop, a notebook's for instance, on a thread of its own), as
    Orbax's own handlers' ``save`` does: the handlers' ``save`` is one call of this."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        futures = asyncio.run(save)
    else:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            futures = pool.submit(asyncio.run, save).result()
    for future in futures:
        future.result()
