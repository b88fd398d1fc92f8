"""The straightforward MetadataManager the fast one is measured against.

One ``nnx.Rngs`` stream call and one ``nnx.Variable`` dict update per record: what a
direct reading of the seed API does (and what the original datarax does). The library keeps
this path as ``MetadataManager._create_generic``, its fallback inside ``nnx`` transforms, so
the baseline is that code, not a copy of it.
"""

from __future__ import annotations

from datarax.core.metadata import MetadataManager


class StraightforwardManager(MetadataManager):
    """Per-record stream call and Variable update; the baseline of ``metadata_bench``."""

    create_metadata = MetadataManager._create_generic
