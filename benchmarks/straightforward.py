"""The straightforward MetadataManager the fast one is measured against.

One ``nnx.Rngs`` stream call and one ``nnx.Variable`` dict update per record: what a
direct reading of the seed API does (and what the original datarax does).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from datarax.core.metadata import RecordMetadata


class StraightforwardManager(nnx.Module):
    """Per-record stream call and Variable update; the baseline of ``metadata_bench``."""

    def __init__(self, *, rngs: nnx.Rngs | None = None, track_batches: bool = False) -> None:
        self.rngs = rngs
        self.shard_id = None
        self.state = nnx.Variable(
            {"global_step": 0, "epoch": 0, "index": 0, "batch_idx": 0 if track_batches else None}
        )

    def create_metadata(self, record_key: Any, source_info: dict | None = None) -> RecordMetadata:
        rng_key = None
        if self.rngs is not None and "metadata" in self.rngs:
            rng_key = self.rngs.metadata()
        s = self.state.get_value()
        record = RecordMetadata(
            index=s["index"],
            record_key=record_key,
            rng_key=rng_key,
            epoch=s["epoch"],
            global_step=s["global_step"],
            batch_idx=s["batch_idx"],
            shard_id=self.shard_id,
            source_info=source_info,
        )
        self.state.set_value({**s, "index": s["index"] + 1, "global_step": s["global_step"] + 1})
        return record
