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


async def _nothing() -> None:
    return None


def settle_refused_save(timeout: float = 60.0) -> None:
    """Waits, within ``timeout`` seconds, for the directories Orbax is creating for the save
    whose ``async_save`` is about to raise (the signals of Orbax's current operation).

    An item refused at the save call raises from ``async_save``, after Orbax started creating
    the step's directories in a thread of their own; Orbax then waits for that thread
    nowhere, so closing the ``CheckpointManager`` (or leaving the process) at once made that
    thread fail, and every future waiting on its signal time out, with errors logged from
    Orbax's threads. Waiting here ends that thread first. Orbax's temporary directory of the
    step stays until the step is saved again (or ``cleanup_tmp_directories``).
    """
    try:
        ocp.future.CommitFutureAwaitingContractedSignals(
            _nothing(), name="datarax_refused_save", timeout_secs=int(timeout)
        ).result(timeout=timeout)
    except Exception:  # the refusal raised next is what the caller must see
        return
