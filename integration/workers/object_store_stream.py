"""The training job of the object-storage tests, step by step; the tests recompute it as
reference in their own process.

Each step takes a batch of record metadata from a ``MetadataManager`` and updates a small
integer "model" from it, so that a resumed run matches an uninterrupted one bit for bit
only if the model, the manager and its key stream all came back exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from datarax.core.metadata import Metadata, MetadataManager, RecordMetadata
from integration.workers.streams import next_batch, record_log, shard_manager

SEED = 5
BATCH = 16
"""Records per step: a multiple of the 8 CPU devices the sharded batch is spread over."""
EPOCH_STEPS = 4


def initial_state() -> tuple[MetadataManager, dict[str, jax.Array]]:
    """The manager and the model at step 0."""
    return shard_manager(SEED, None), {"w": jnp.zeros(BATCH, jnp.int32)}


def batch_metadata(records: RecordMetadata) -> Metadata:
    """The batch's records as one ``Metadata`` whose leaves are arrays of shape ``[BATCH]``."""
    return Metadata(
        index=records.index,
        epoch=records.epoch,
        global_step=records.global_step,
        batch_idx=records.batch_idx,
        rng_key=records.rng_key,
    )


def shard(batch: Metadata) -> Metadata:
    """``batch`` with every array leaf spread over all devices (8 in the workers)."""
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("x",)), P("x"))
    return jax.tree.map(lambda leaf: jax.device_put(leaf, sharding), batch)


def metadata_log(batch: Metadata) -> dict[str, Any]:
    """Every field of a batch ``Metadata`` as JSON-ready lists (as :func:`record_log`)."""
    log = {
        name: np.asarray(getattr(batch, name)).tolist()
        for name in ("index", "epoch", "global_step", "batch_idx")
    }
    log["rng_key"] = np.asarray(jax.random.key_data(batch.rng_key)).tolist()
    return log


def train_step(
    manager: MetadataManager, model: dict[str, jax.Array], step: int
) -> tuple[Metadata, dict[str, jax.Array], dict[str, Any]]:
    """Runs ``step``: its batch, the updated model, and the step's log."""
    records = next_batch(manager, step, BATCH, EPOCH_STEPS)
    bits = jax.vmap(lambda key: jax.random.bits(key, dtype=jnp.uint32))(records.rng_key) >> 8
    model = {"w": model["w"] + jnp.asarray(records.index, jnp.int32) + bits.astype(jnp.int32)}
    log = {"step": step, **record_log(records), "model": np.asarray(model["w"]).tolist()}
    return batch_metadata(records), model, log


def reference_logs(steps: int) -> dict[int, dict[str, Any]]:
    """The logs of an uninterrupted run of ``steps`` steps, by step."""
    manager, model = initial_state()
    logs = {}
    for step in range(steps):
        _, model, logs[step] = train_step(manager, model, step)
    return logs
