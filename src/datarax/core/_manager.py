"""``MetadataManager``: the counters and RNG stream that give each record its metadata."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from datarax.core._batch import build_batch, check_fits, record_key_array, stream_keys
from datarax.core._checks import check_counter, check_source_info
from datarax.core._keys import encode_key_bytes
from datarax.core._keystream import STREAM, KeyStream, advance, reservable
from datarax.core._lock import POSITION_LOCK
from datarax.core._record import PENDING, RecordMetadata
from datarax.core._variables import has_hooks

_new = object.__new__


class MetadataManager(nnx.Module):
    """Utility module for managing metadata state in data sources.

    This is a composable utility that data sources can optionally include to track and
    manage metadata like epochs, global steps, and indices. It's designed to be used via
    composition rather than inheritance.

    When ``rngs`` has a stream named ``metadata``, each record gets an ``rng_key``
    bit-identical to what calling that stream once per record returns
    (``fold_in(stream_key, count)``, the count advancing by one per record). Other streams
    are never used, so a pipeline does not consume a model's ``params`` or ``dropout``
    randomness; without a ``metadata`` stream records have ``rng_key=None``.

    Keys are derived lazily, in vectorised windows, when a record's ``rng_key`` is first
    read. What the manager shows is always the logical position, the records actually
    handed out: ``state`` holds the counters, and the ``metadata`` stream's ``count`` the
    number of keys drawn (kept as a host NumPy ``uint32`` array, so that advancing it costs
    no device operation).

    Threads: a manager may be used from several threads at once (a Grain or prefetch
    loader thread creating records while the training thread saves a checkpoint). Every
    record and every batch reserves its counters and its stream counts in one step, under a
    process-wide re-entrant lock that ``next_epoch``, ``next_batch``, ``reset`` and the
    checkpoint layer's snapshot of the manager also hold; so no two records ever get the
    same ``index`` or the same key, and every snapshot shows the counters and the
    ``metadata`` stream's count of one instant (between two records, never inside one).
    Deriving keys and building a batch's arrays happen after the lock is released. The
    guarantee covers what the manager itself changes: a thread that calls the ``rngs``
    streams or sets ``state`` directly must do its own locking.

    Variables: ``state`` and the streams' Variables are read and written through Flax's
    public API only. A Variable with an ``on_get_value`` or ``on_set_value`` hook always
    goes through ``get_value()``/``set_value()`` (its hooks run for every record); others
    through ``get_raw_value()``/``set_raw_value()``, which keep Flax's check that a
    Variable is not updated from another trace level: calling :meth:`create_metadata`
    inside a plain ``jax.jit`` of a closure over the manager raises Flax's
    ``TraceContextError`` and changes nothing (use ``nnx.jit``, which passes the manager
    in).

    Args:
        rngs: Optional Rngs for generating RNG keys in metadata.
        initial_epoch: Starting epoch number.
        initial_step: Starting global step count.
        track_batches: Whether to track batch indices.
        shard_id: Optional shard identifier for distributed processing.

    Attributes:
        state (nnx.Variable): Holds ``{'global_step', 'epoch', 'index', 'batch_idx'}``
            (``batch_idx`` is ``0`` when tracking batches, else ``None``).

    Examples:
        >>> from flax import nnx
        >>> from datarax.core.metadata import MetadataManager
        >>> manager = MetadataManager(rngs=nnx.Rngs(metadata=0), track_batches=True)
        >>> first = manager.create_metadata(record_key=17)
        >>> (first.index, first.global_step, first.batch_idx)
        (0, 0, 0)
        >>> manager.state.get_value()
        {'batch_idx': 0, 'epoch': 0, 'global_step': 1, 'index': 1}
        >>> batch = manager.create_batch_metadata([18, 19, 20])
        >>> batch.index
        array([1, 2, 3], dtype=int32)
    """

    def __init__(
        self,
        *,
        rngs: nnx.Rngs | None = None,
        initial_epoch: int = 0,
        initial_step: int = 0,
        track_batches: bool = False,
        shard_id: int | None = None,
    ) -> None:
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs or None, got {type(rngs).__name__}.")
        if not isinstance(track_batches, bool):
            raise TypeError(f"track_batches must be a bool, got {type(track_batches).__name__}.")
        for name, value in (("initial_epoch", initial_epoch), ("initial_step", initial_step)):
            if not isinstance(value, int | np.integer):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}.")
            check_counter(name, value)
        if shard_id is not None and not isinstance(shard_id, int | np.integer):
            raise TypeError(f"shard_id must be an int or None, got {type(shard_id).__name__}.")
        check_counter("shard_id", shard_id, optional=True)
        self.rngs = rngs
        self.shard_id = None if shard_id is None else int(shard_id)
        self.track_batches = track_batches
        # Any: the counters are ints, or arrays/tracers once set inside nnx transforms.
        self.state: nnx.Variable[dict[str, Any]] = nnx.Variable(
            {
                "global_step": int(initial_step),
                "epoch": int(initial_epoch),
                "index": 0,
                "batch_idx": 0 if track_batches else None,
            }
        )

    # nnx.Module's metaclass defines __call__(*args, **kwargs), which inspect.signature would
    # show for the class: show the constructor's own (the documented one) instead.
    __signature__ = inspect.signature(__init__).replace(
        parameters=list(inspect.signature(__init__).parameters.values())[1:]
    )

    def create_metadata(
        self, record_key: Any, source_info: dict[str, Any] | None = None
    ) -> RecordMetadata:
        """Create metadata for a record and update internal state.

        Args:
            record_key: Reference to the actual record. A ``str`` key may be at most 128
                UTF-8 bytes.
            source_info: Optional source-specific metadata.

        Returns:
            RecordMetadata instance with current state. Then ``index`` and ``global_step``
            each advance by one.

        Raises:
            ValueError: A ``str`` record key longer than 128 UTF-8 bytes, with a NUL or with
                a lone surrogate.
            TypeError: ``source_info`` is not a dict.
        """
        if type(record_key) is str and (
            len(record_key) > 32 or "\x00" in record_key or not record_key.isascii()
        ):  # 32 ASCII characters without a NUL always encode
            encode_key_bytes(record_key)
        if source_info is not None and type(source_info) is not dict:
            check_source_info(source_info)
        with POSITION_LOCK:
            taken = self._reserve(1)
            if taken is None:
                return self._create_generic(record_key, source_info)
        s, rng_source = taken
        record = _new(RecordMetadata)
        record.__dict__.update(
            index=s["index"],
            record_key=record_key,
            rng_key=None if rng_source is None else PENDING,
            epoch=s["epoch"],
            global_step=s["global_step"],
            batch_idx=s["batch_idx"],
            shard_id=self.shard_id,
            source_info=source_info,
            _rng_source=rng_source,
        )
        return record

    def _reserve(
        self, n: int, *, bounded: bool = False
    ) -> tuple[dict[str, Any], tuple[KeyStream, int] | None] | None:
        """Reserves ``n`` records: advances the counters and the ``metadata`` stream's count
        by ``n``, and returns the counters before (the first record's) with the stream's
        :class:`KeyStream` and first count. ``None``, touching nothing, where the counters
        are not Python ints or a Variable has hooks or the stream is not one concrete key:
        the caller then takes the path through ``get_value``/``set_value`` and the stream.

        Call under :data:`POSITION_LOCK`. With ``bounded``, counters that would pass the
        batch dtype raise ``OverflowError`` before anything changes.
        """
        var = self.state
        if has_hooks(var):
            return None
        s = var.get_raw_value()
        if (
            type(s) is not dict
            or type(s["index"]) is not int
            or type(s["global_step"]) is not int
            or type(s["epoch"]) is not int
        ):
            return None
        stream = None if self.rngs is None else vars(self.rngs).get(STREAM)
        rng_source = None if stream is None else reservable(stream)
        if stream is not None and rng_source is None:
            return None
        if bounded:
            check_fits(s, self.shard_id, n)
        index, step = s["index"], s["global_step"]
        # set_raw_value checks the trace level: inside a plain jax.jit it raises, before
        # the stream count below is touched.
        var.set_raw_value(
            {
                "global_step": step + n,
                "epoch": s["epoch"],
                "index": index + n,
                "batch_idx": s["batch_idx"],
            }
        )
        if stream is not None and rng_source is not None:  # rng_source implies stream
            try:
                advance(stream, rng_source[1], n)
            except BaseException:
                var.set_raw_value(s)
                raise
        return s, rng_source

    def _create_generic(
        self, record_key: Any, source_info: dict[str, Any] | None = None
    ) -> RecordMetadata:
        """The straightforward path, for counters that are arrays or tracers (inside
        ``nnx`` transforms), Variables with hooks and streams whose key is not a single key:
        one stream call and one ``get_value``/``set_value`` of ``state`` per record."""
        with POSITION_LOCK:
            rng_key = None
            if self.rngs is not None and STREAM in vars(self.rngs):
                rng_key = getattr(self.rngs, STREAM)()
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
            self.state.set_value(
                {**s, "index": s["index"] + 1, "global_step": s["global_step"] + 1}
            )
            return record

    def create_batch_metadata(
        self, record_keys: Any, source_info: dict[str, Any] | None = None
    ) -> RecordMetadata:
        """Creates the metadata of a whole batch at once.

        Equal, element by element and key by key, to calling :meth:`create_metadata` once
        per record key, and leaves the manager in the same state. Works inside ``nnx``
        transforms too (then the fields are JAX arrays, derived from the traced state).

        Args:
            record_keys: A sequence or 1-D array (NumPy, or JAX of an integer dtype, traced
                inside a transformation too) of record keys, all ints or all strs.
            source_info: Optional source-specific metadata, shared by the batch.

        Returns:
            One RecordMetadata whose fields are arrays with a leading axis of
            ``len(record_keys)``: NumPy integer arrays for the counters (JAX's default
            integer dtype; JAX arrays when the counters are arrays or traced), a typed key
            array for ``rng_key``, and ``record_keys`` as a NumPy array (a traced array
            as it is).

        Raises:
            TypeError: Keys of mixed or unsupported types.
            ValueError: Keys not 1-D, or a ``str`` key longer than 128 UTF-8 bytes.
            OverflowError: Counters would pass the range of the integer dtype.
        """
        keys = record_key_array(record_keys)
        check_source_info(source_info)
        n = len(keys)
        with POSITION_LOCK:
            taken = self._reserve(n, bounded=True)
            if taken is None:
                return self._create_batch_generic(keys, source_info)
        # Reserved: the keys are derived and the arrays built without the lock.
        s, rng_source = taken
        rng_key = None if rng_source is None else rng_source[0].derive_batch(rng_source[1], n)
        return build_batch(keys, s, self.shard_id, rng_key, source_info)

    def _create_batch_generic(
        self, keys: np.ndarray | jax.Array, source_info: dict[str, Any] | None
    ) -> RecordMetadata:
        """The batch counterpart of :meth:`_create_generic`, vectorised: one read and one
        write of ``state`` and of the stream's count, through ``get_value``/``set_value``."""
        n = len(keys)
        with POSITION_LOCK:
            rng_key = None
            if self.rngs is not None and STREAM in vars(self.rngs):
                stream = getattr(self.rngs, STREAM)
                count = stream.count.get_value()
                rng_key = stream_keys(stream.key.get_value(), count, n)
                stream.count.set_value(count + jnp.uint32(n))
            s = self.state.get_value()
            self.state.set_value(
                {**s, "index": s["index"] + n, "global_step": s["global_step"] + n}
            )
        return build_batch(keys, s, self.shard_id, rng_key, source_info)

    def next_epoch(self) -> None:
        """Advances to the next epoch: ``epoch + 1``, ``index`` back to 0."""
        with POSITION_LOCK:
            s = self.state.get_value()
            self.state.set_value({**s, "epoch": s["epoch"] + 1, "index": 0})

    def next_batch(self) -> None:
        """Advances ``batch_idx`` by one when tracking batches; otherwise does nothing."""
        if self.track_batches:
            with POSITION_LOCK:
                s = self.state.get_value()
                self.state.set_value({**s, "batch_idx": s["batch_idx"] + 1})

    def reset(self) -> None:
        """Resets ``global_step``, ``epoch`` and ``index`` to 0 (``batch_idx`` to 0 when
        tracking batches). The ``metadata`` stream is not rewound."""
        with POSITION_LOCK:
            s = self.state.get_value()
            batch_idx = 0 if self.track_batches else s["batch_idx"]
            self.state.set_value({"global_step": 0, "epoch": 0, "index": 0, "batch_idx": batch_idx})
