"""The demo's data: a seeded synthetic dataset and a source that attaches metadata to records.

The source keeps no position of its own. Where it is in the stream (epoch, and index within
the epoch) lives in its :class:`~datarax.core.metadata.MetadataManager`, and the order of an
epoch is a pure function of the seed and the epoch number, so checkpointing the manager is
enough to resume the stream exactly: there is no iterator state to lose.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from datarax.core.metadata import MetadataManager, RecordMetadata


@dataclasses.dataclass(frozen=True)
class SyntheticDataset:
    """``num_examples`` points in ``features`` dimensions, labelled by ``classes`` Gaussian
    clusters; generated from a seed with NumPy's PCG64, so every process gets the same bits.

    Attributes:
        x: ``float32`` array of shape ``(num_examples, features)``.
        y: ``int32`` array of shape ``(num_examples,)``.
    """

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def generate(
        cls, seed: int, num_examples: int, features: int, classes: int
    ) -> SyntheticDataset:
        """Generates the dataset of ``seed``."""
        rng = np.random.default_rng([seed, 0])
        centres = rng.normal(0.0, 0.5, size=(classes, features))  # overlapping: not too easy
        y = rng.integers(0, classes, size=num_examples)
        x = centres[y] + rng.normal(0.0, 1.0, size=(num_examples, features))
        return cls(x=x.astype(np.float32), y=y.astype(np.int32))

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One training batch: raw features, labels, and the records' metadata.

    Attributes:
        x: ``float32`` features, before augmentation (augmentation runs in the jitted step).
        y: ``int32`` labels.
        records: one batched :class:`RecordMetadata` (fields of shape ``(batch_size,)``);
            ``records.rng_key`` drives the augmentation of each record.
    """

    x: np.ndarray
    y: np.ndarray
    records: RecordMetadata


class AugmentedSource:
    """Epochs of shuffled batches whose records get metadata from a ``MetadataManager``.

    Each epoch visits the dataset in the order ``permutation(seed, epoch)``; a final batch
    that would be short is dropped. The manager's ``epoch`` and ``index`` are the stream
    position, advanced by ``create_batch_metadata`` (``index``, ``global_step``, and the
    ``metadata`` RNG stream), ``next_batch`` and ``next_epoch``.

    Args:
        dataset: the records.
        batch_size: records per batch, at most ``len(dataset)``.
        seed: seeds the epoch orders.
        manager: attaches metadata to every record; checkpoint it to resume the stream.
    """

    def __init__(
        self, dataset: SyntheticDataset, batch_size: int, seed: int, manager: MetadataManager
    ) -> None:
        if not 0 < batch_size <= len(dataset):
            raise ValueError(
                f"batch_size must be in 1..{len(dataset)} (the dataset size), got {batch_size}."
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.manager = manager

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset indices of ``epoch``, in the order that epoch visits them."""
        return np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.dataset))

    def next_batch(self) -> Batch:
        """The next batch of the stream, with its records' metadata."""
        state = self.manager.state.get_value()
        if state["index"] + self.batch_size > len(self.dataset):
            self.manager.next_epoch()
            state = self.manager.state.get_value()
        start = state["index"]
        keys = self.epoch_order(state["epoch"])[start : start + self.batch_size]
        records = self.manager.create_batch_metadata(keys)
        self.manager.next_batch()
        return Batch(x=self.dataset.x[keys], y=self.dataset.y[keys], records=records)


def augment(keys: jax.Array, x: jax.Array, noise: float) -> jax.Array:
    """Per-record augmentation drawn from each record's own key: Gaussian noise and a random
    10% feature dropout. Traceable; the demo calls it inside the jitted training step."""

    def one(key: jax.Array, row: jax.Array) -> jax.Array:
        k_noise, k_mask = jax.random.split(key)
        keep = jax.random.bernoulli(k_mask, 0.9, row.shape)
        return jnp.where(keep, row, 0.0) + noise * jax.random.normal(k_noise, row.shape)

    return jax.vmap(one)(keys, x)
