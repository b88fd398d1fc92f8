"""Grain's oracle: save at every step of a stream, restore each step, and continue; what
follows must equal the uninterrupted run bit for bit (indices, epochs, steps, batch_idx,
shard_id, record keys, key data), for records, batches, ``next_batch``/``next_epoch`` and
a stream the manager does not use."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from datarax.checkpoint import MetadataManagerRestore, MetadataManagerSave
from datarax.core.metadata import MetadataManager

STEPS = 16
OPS = ("record", "batch", "next_batch", "record", "next_epoch", "str_batch", "params", "record")
CONFIGS = {
    "three streams, batches tracked, shard": dict(
        rngs=lambda: nnx.Rngs(metadata=3, params=1, dropout=jax.random.key(7, impl="rbg")),
        track_batches=True,
        shard_id=5,
    ),
    "unsafe_rbg stream, initial counters": dict(
        rngs=lambda: nnx.Rngs(metadata=jax.random.key(9, impl="unsafe_rbg"), params=2),
        initial_epoch=4,
        initial_step=100,
    ),
    "raw key stream, batches tracked": dict(
        rngs=lambda: nnx.Rngs(metadata=jax.random.PRNGKey(9), params=1),
        track_batches=True,
        shard_id=0,
    ),
    "no metadata stream": dict(rngs=lambda: nnx.Rngs(params=2), track_batches=True),
    "no rngs": dict(rngs=lambda: None, shard_id=2),
}


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return ("key", str(jax.random.key_impl(value)), jax.random.key_data(value).tolist())
    if isinstance(value, str | int | dict):
        return value
    array = np.asarray(value)
    return (array.dtype.str, array.tolist())


def _step(manager: MetadataManager, op: str, i: int) -> Any:
    """One step of the stream; what it handed out, as plain values."""
    if op in ("next_batch", "next_epoch"):
        getattr(manager, op)()
        return op
    if op == "params":
        return _plain(manager.rngs.params()) if manager.rngs and "params" in manager.rngs else None
    if op == "record":
        r = manager.create_metadata(i if i % 2 else f"k{i}", source_info={"i": i % 3})
    else:
        keys = list(range(i, i + 3)) if op == "batch" else [f"s{i}", f"t{i}"]
        r = manager.create_batch_metadata(keys)
    fields = ("index", "record_key", "rng_key", "epoch", "global_step", "batch_idx", "shard_id")
    return [_plain(getattr(r, f)) for f in fields] + [r.source_info]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_restore_at_every_step_continues_like_the_uninterrupted_run(tmp_path, name):
    config = dict(CONFIGS[name])
    rngs = config.pop("rngs")

    def new() -> MetadataManager:
        return MetadataManager(rngs=rngs(), **config)

    schedule = [OPS[i % len(OPS)] for i in range(STEPS)]
    reference = new()
    expected = [_step(reference, op, i) for i, op in enumerate(schedule)]
    manager = new()
    options = ocp.CheckpointManagerOptions(max_to_keep=None)
    with ocp.CheckpointManager(tmp_path, options=options) as mngr:
        for i, op in enumerate(schedule):
            mngr.save(i, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
            assert _step(manager, op, i) == expected[i]  # async saves change nothing
        mngr.wait_until_finished()
    with ocp.CheckpointManager(tmp_path) as mngr:
        for step in range(STEPS):
            with_template = ocp.args.Composite(data=MetadataManagerRestore(new()))
            for restored in (mngr.restore(step, args=with_template), mngr.restore(step)):
                resumed = restored["data"]
                got = [_step(resumed, op, i) for i, op in enumerate(schedule) if i >= step]
                assert got == expected[step:], f"resumed at step {step}"
