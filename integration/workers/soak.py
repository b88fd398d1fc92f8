"""Runs that a soak test kills again and again: a loader thread, async saves every step.

In each run a loader thread creates records with ``MetadataManager.create_metadata`` (an
``nnx.Rngs(metadata=SEED)`` stream) into a small prefetch queue; the main thread takes
``--records-per-step`` records per step, logs them (index and rng key data) and starts an
async save of the manager and of a payload (``--payload-leaves`` arrays of
``--payload-kib`` KiB, so that deleting an old step takes a while) every step, keeping
``max_to_keep=2`` steps. With ``--atomic-delete`` old steps are deleted by renaming them
into the ``deleted`` subdirectory (``CheckpointManagerOptions.todelete_subdir``). A run
resumes from the newest step that restores (a ``MetadataCheckpointError`` moves on to the
step before), writes ``start STEP`` and ``saved STEP`` after each ``save`` call, and stops
(waiting to be killed) after ``--steps`` steps.

This process imports JAX, Orbax and datarax once, without starting JAX's runtime (no
thread yet, so forking is safe), writes ``ready``, and then for each line ``run LOG`` on
stdin forks a run logging to ``LOG``, writes ``forked PID``, waits for it to end (the test
kills it with SIGKILL) and writes ``reaped PID SIGNAL``. A fork costs milliseconds where
a fresh interpreter would import everything again.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from datarax.checkpoint import MetadataCheckpointError, MetadataManagerRestore, MetadataManagerSave
from datarax.core.metadata import MetadataManager, RecordMetadata

sys.path.insert(0, str(Path(__file__).parents[2]))  # the repository root: run as a script
from examples.demo.processes import wait_to_be_killed

TRASH = "deleted"
"""The ``todelete_subdir`` that old steps are renamed into with ``--atomic-delete``."""


def new_manager(seed: int) -> MetadataManager:
    """The loader's manager before its first record."""
    return MetadataManager(rngs=nnx.Rngs(metadata=seed))


def record_entry(record: RecordMetadata) -> list[Any]:
    """A record as logged: ``[global_step, index, epoch, record_key, *rng key data]``."""
    key_data = np.asarray(jax.random.key_data(record.rng_key)).tolist()
    return [record.global_step, record.index, record.epoch, record.record_key, *key_data]


def payload(step: int, leaves: int, kib: int) -> dict[str, np.ndarray]:
    """The payload saved at ``step``: values that differ from step to step and leaf to leaf."""
    n = kib * 1024 // 4
    return {
        f"leaf_{i:02d}": np.arange(n, dtype=np.int32) + np.int32(step * 1000 + i)
        for i in range(leaves)
    }


def checkpoint_manager(directory: Path, *, atomic_delete: bool) -> ocp.CheckpointManager:
    """The run's CheckpointManager: async saves, the two latest steps kept."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2,
        enable_async_checkpointing=True,
        todelete_subdir=TRASH if atomic_delete else None,
    )
    return ocp.CheckpointManager(directory, options=options)


def restore_args(seed: int, leaves: int, kib: int) -> ocp.args.Composite:
    """What a step holds: the manager and the payload."""
    return ocp.args.Composite(
        data=MetadataManagerRestore(new_manager(seed)),
        payload=ocp.args.StandardRestore(payload(0, leaves, kib)),
    )


def resume(mngr: ocp.CheckpointManager, seed: int, leaves: int, kib: int):
    """``(step, manager)`` of the newest step that restores, or ``(0, new manager)``."""
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = mngr.restore(step, args=restore_args(seed, leaves, kib))
        except MetadataCheckpointError as error:
            print(f"skipped {step}: {error}", flush=True)
            continue
        return step, restored["data"]
    return 0, new_manager(seed)


def load(manager: MetadataManager, records: queue.Queue) -> None:
    """The loader thread: records, one after another, into the prefetch queue."""
    while True:
        record = manager.create_metadata(record_key=manager.state.get_value()["global_step"])
        records.put(record)


def run(args: argparse.Namespace, log: Path) -> None:
    """One run, in a forked process: resume, then load, log and save until killed."""
    sys.setswitchinterval(args.switch_interval)  # switch threads often: races show up
    mngr = checkpoint_manager(args.checkpoints, atomic_delete=args.atomic_delete)
    start, manager = resume(mngr, args.seed, args.payload_leaves, args.payload_kib)
    print(f"start {start}", flush=True)
    records: queue.Queue = queue.Queue(maxsize=2 * args.records_per_step)
    threading.Thread(target=load, args=(manager, records), daemon=True).start()
    with log.open("w") as log_file:
        for step in range(start + 1, start + 1 + args.steps):
            batch = [record_entry(records.get()) for _ in range(args.records_per_step)]
            log_file.write(json.dumps({"step": step, "records": batch}) + "\n")
            log_file.flush()
            composite = ocp.args.Composite(
                data=MetadataManagerSave(manager),
                payload=ocp.args.StandardSave(payload(step, args.payload_leaves, args.payload_kib)),
            )
            mngr.save(step, args=composite)
            print(f"saved {step}", flush=True)
    mngr.wait_until_finished()
    wait_to_be_killed("done")  # the test kills every run; one that gets here waits for it


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", type=Path, required=True)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--records-per-step", type=int, default=8)
    p.add_argument("--payload-leaves", type=int, default=8)
    p.add_argument("--payload-kib", type=int, default=64)
    p.add_argument("--atomic-delete", action="store_true")
    p.add_argument("--switch-interval", type=float, default=1e-5)
    args = p.parse_args()
    print("ready", flush=True)
    for line in sys.stdin:
        command, log = line.split()
        if command != "run":
            return 1
        pid = os.fork()
        if pid == 0:  # the run: it never returns
            try:
                run(args, Path(log))
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            os._exit(1)
        print(f"forked {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"reaped {pid} {os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
