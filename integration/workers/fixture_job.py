"""A job that resumes from a checkpoint whose manager item was written in format version 1.

It restores the latest step of ``--checkpoints`` with a plain ``CheckpointManager`` and
``Composite(manager=MetadataManagerRestore(...))``, then goes on creating records one at a
time and saving the manager with today's code every ``--save-every`` steps. Writes
``start STEP``, ``saving STEP`` (then waits to be killed, with ``--announce-save``) and
``done``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from datarax.checkpoint import MetadataManagerRestore, MetadataManagerSave
from datarax.core.metadata import MetadataManager

sys.path.insert(0, str(Path(__file__).parents[2]))  # the repository root: run as a script
from integration.workers.streams import fixture_next_record, log_step


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--until", type=int, required=True)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--announce-save", type=int)
    args = p.parse_args()

    # Built like the fixture's manager (the same streams, key impls and track_batches); its
    # keys, counters and shard id are placeholders that the restore replaces.
    manager = MetadataManager(
        rngs=nnx.Rngs(metadata=jax.random.key(0, impl="rbg"), params=0), track_batches=True
    )
    with ocp.CheckpointManager(args.checkpoints) as mngr:
        latest = mngr.latest_step()
        restored = mngr.restore(
            latest, args=ocp.args.Composite(manager=MetadataManagerRestore(manager))
        )
        manager = restored["manager"]
        print(f"start {latest}", flush=True)
        with args.log.open("w") as log_file:
            while (step := manager.state.get_value()["global_step"]) < args.until:
                log = fixture_next_record(manager)
                composite = lambda: ocp.args.Composite(  # noqa: E731
                    manager=MetadataManagerSave(manager)
                )
                log_step(
                    log_file, log, mngr, step + 1, args.save_every, args.announce_save, composite
                )
        mngr.wait_until_finished()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
