"""A Grain pipeline whose records get metadata from a MetadataManager, checkpointed with it.

The pipeline is ``MapDataset.range(N).shuffle(seed).repeat(None).map(...)`` (reshuffled
every epoch), iterated one record at a time; each record gets ``create_metadata`` from the
manager, whose epoch advances every ``N`` records. Every ``--save-every`` records one async
``CheckpointManager`` saves the Grain iterator (``grain.checkpoint.CheckpointSave``) and the
manager (``MetadataManagerSave``) in one Composite. Writes ``start STEP``, ``saving STEP``
(then waits to be killed, with ``--announce-save``) and ``done``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grain
import orbax.checkpoint as ocp

from datarax.checkpoint import MetadataManagerRestore, MetadataManagerSave

sys.path.insert(0, str(Path(__file__).parents[2]))  # the repository root: run as a script
from integration.workers.streams import log_step, one_record_log, shard_manager


def pipeline(size: int, seed: int) -> grain.DatasetIterator:
    """A fresh iterator over the pipeline."""
    dataset = grain.MapDataset.range(size).shuffle(seed=seed).repeat(None)
    dataset = dataset.map(lambda i: {"id": int(i), "square": int(i) * int(i)})
    return iter(dataset.to_iter_dataset())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--records", type=int, default=40)
    p.add_argument("--dataset-size", type=int, default=7)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--announce-save", type=int)
    args = p.parse_args()

    iterator = pipeline(args.dataset_size, args.seed)
    manager = shard_manager(args.seed, None)
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    mngr = ocp.CheckpointManager(args.checkpoints, options=options)
    start = 0
    if args.resume and (latest := mngr.latest_step()) is not None:
        restored = mngr.restore(
            latest,
            args=ocp.args.Composite(
                pipeline=grain.checkpoint.CheckpointRestore(iterator),
                data=MetadataManagerRestore(manager),
            ),
        )
        assert restored["pipeline"] is iterator
        manager = restored["data"]
        start = latest
    print(f"start {start}", flush=True)

    with args.log.open("w") as log_file:
        for step in range(start, args.records):
            if step and step % args.dataset_size == 0:
                manager.next_epoch()
            element = next(iterator)
            record = manager.create_metadata(record_key=element["id"])
            log = {"step": step, "element": element, **one_record_log(record)}
            composite = lambda: ocp.args.Composite(  # noqa: E731
                pipeline=grain.checkpoint.CheckpointSave(iterator),
                data=MetadataManagerSave(manager),
            )
            log_step(log_file, log, mngr, step + 1, args.save_every, args.announce_save, composite)
    mngr.wait_until_finished()
    mngr.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
