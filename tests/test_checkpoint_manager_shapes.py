"""A stream whose count is not shaped like its key (each key of an ``nnx.RngStream`` has
its own count) cannot resume: it is refused at the save call and on restore, never turned
into a manager whose first record raises JAX's ``TypeError``."""

from __future__ import annotations

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from datarax.checkpoint import MetadataCheckpointError, MetadataManagerSave
from datarax.core.metadata import MetadataManager


def test_a_count_shaped_unlike_its_key_is_refused_when_the_args_are_built(tmp_path):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0))
    manager.rngs.metadata.count.set_value(np.array([1], np.uint32))
    with pytest.raises(MetadataCheckpointError, match=r"rngs\['metadata'\]\.count: expected"):
        MetadataManagerSave(manager)
    with pytest.raises(TypeError):  # what a resume from it would have done
        manager.create_metadata(record_key=0)
    assert list(tmp_path.iterdir()) == []


def test_forked_streams_with_a_count_per_key_still_save(tmp_path):
    manager = MetadataManager(rngs=nnx.Rngs(metadata=0, dropout=1))
    manager.rngs.dropout.key.set_value(manager.rngs.dropout.key.get_value().reshape(1))
    manager.rngs.dropout.count.set_value(np.zeros(1, np.uint32))
    with ocp.CheckpointManager(tmp_path) as mngr:
        mngr.save(1, args=ocp.args.Composite(data=MetadataManagerSave(manager)))
        mngr.wait_until_finished()
        restored = mngr.restore(1)["data"]
    assert restored.rngs.dropout.count.get_value().shape == (1,)
