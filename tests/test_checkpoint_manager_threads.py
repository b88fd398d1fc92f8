"""A manager used by a loader thread while the training thread saves: every save is one
consistent instant, and the next record after a resume is the one the saved run handed out
next."""

from __future__ import annotations

import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from datarax.checkpoint import MetadataManagerRestore, MetadataManagerSave
from datarax.core.metadata import MetadataManager


def test_saves_beside_a_loader_thread_are_each_one_consistent_instant(tmp_path):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=5))
    records = []  # every record handed out, its key read only after the run
    failures: list[BaseException] = []
    stop = threading.Event()

    def loader() -> None:
        try:
            while not stop.is_set():
                records.append(manager.create_metadata(record_key=0))
                records.append(manager.create_batch_metadata([1, 2, 3]))
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    saves = 200
    interval = sys.getswitchinterval()
    thread = threading.Thread(target=loader)
    try:
        sys.setswitchinterval(1e-6)
        with ocp.CheckpointManager(tmp_path) as mngr:
            thread.start()
            for step in range(saves):
                mngr.save(step, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
            stop.set()
            thread.join()
            mngr.wait_until_finished()
    finally:
        stop.set()
        sys.setswitchinterval(interval)
    assert failures == []
    indices = sorted(i for r in records for i in np.atleast_1d(r.index).tolist())
    assert indices == list(range(manager.state.get_value()["index"]))  # none twice, none lost
    stream_key = jax.random.key(5)  # record i's key is fold_in(stream key, i) in this run

    inconsistent, seen = [], set()
    template = MetadataManagerRestore(MetadataManager(rngs=nnx.Rngs(metadata=0)))
    with ocp.CheckpointManager(tmp_path) as mngr:
        for step in range(saves):
            restored = mngr.restore(step, args=ocp.args.Composite(data=template))["data"]
            state = restored.state.get_value()
            count = int(restored.rngs.metadata.count.get_value())
            record = restored.create_metadata(record_key=0)
            key = np.asarray(jax.random.key_data(record.rng_key)).tolist()
            seen.add(record.index)
            # The next record after a resume is the one the saved run handed out next.
            expected = jax.random.key_data(jax.random.fold_in(stream_key, record.index))
            if not (
                state["index"] == state["global_step"] == count == record.index
                and key == np.asarray(expected).tolist()
            ):
                inconsistent.append((step, state, count))
    assert inconsistent == []
    assert len(seen) > saves // 4, len(records)  # the saves fell between the loader's records
