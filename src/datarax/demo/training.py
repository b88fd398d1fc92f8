"""One training run of the demo, checkpointed with an async ``ocp.CheckpointManager``.

Every ``save_every`` steps the run saves, in one ``ocp.args.Composite``, the model
parameters, the optimizer state and the data pipeline's ``MetadataManager``; a run started
with ``resume=True`` restores the latest of those checkpoints and continues from it. Each
step is logged as one JSON line (:class:`StepLog`), the loss as its float32 bit pattern, so
that two runs can be compared bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from datarax.checkpoint import MetadataManagerRestore, MetadataManagerSave
from datarax.core.metadata import MetadataManager, RecordMetadata
from datarax.demo.data import AugmentedSource, SyntheticDataset
from datarax.demo.model import MLP, make_optimizer, train_step


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; two runs with equal configs compute the same bits.

    Attributes:
        steps: training steps of the whole run.
        seed: seeds the dataset, the epoch orders, the parameters and the records' keys.
        save_every: a checkpoint is saved after every ``save_every`` steps.
        batch_size: records per step.
        num_examples: size of the synthetic dataset.
        features: input dimension.
        hidden: width of the MLP's hidden layers.
        classes: number of classes.
        learning_rate: Adam's learning rate.
        noise: standard deviation of the augmentation noise.
    """

    steps: int = 60
    seed: int = 0
    save_every: int = 5
    batch_size: int = 32
    num_examples: int = 400
    features: int = 16
    hidden: int = 64
    classes: int = 4
    learning_rate: float = 0.01
    noise: float = 0.1

    def __post_init__(self) -> None:
        for name in ("steps", "save_every", "batch_size", "num_examples", "features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.seed < 2**31 - 1:
            raise ValueError(f"seed must be in 0..{2**31 - 2}, got {self.seed}.")

    def to_json(self) -> str:
        """The config as a JSON object (how the demo hands it to a child process)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """The config of :meth:`to_json`'s output."""
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True)
class StepLog:
    """What one training step consumed and produced, in exactly comparable form.

    Attributes:
        step: the step number, from 0.
        loss_bits: the loss's float32 bit pattern, as an unsigned int.
        index, epoch, global_step, batch_idx, record_key: per record of the batch.
        rng_key: per record, the key data (``jax.random.key_data``) of its ``rng_key``.
    """

    step: int
    loss_bits: int
    index: list[int]
    epoch: list[int]
    global_step: list[int]
    batch_idx: list[int]
    record_key: list[int]
    rng_key: list[list[int]]

    @property
    def loss(self) -> float:
        """The loss, decoded from its bit pattern."""
        return float(np.uint32(self.loss_bits).view(np.float32))

    @classmethod
    def of(cls, step: int, loss: jax.Array, records: RecordMetadata) -> StepLog:
        """The log of ``step``, whose batch had ``records`` and whose loss was ``loss``."""
        return cls(
            step=step,
            loss_bits=int(np.asarray(loss, dtype=np.float32).view(np.uint32)),
            index=np.asarray(records.index).tolist(),
            epoch=np.asarray(records.epoch).tolist(),
            global_step=np.asarray(records.global_step).tolist(),
            batch_idx=np.asarray(records.batch_idx).tolist(),
            record_key=np.asarray(records.record_key).tolist(),
            rng_key=np.asarray(jax.random.key_data(records.rng_key)).tolist(),
        )

    def records(self) -> dict[str, Any]:
        """The per-record fields, without the loss."""
        d = dataclasses.asdict(self)
        del d["loss_bits"]
        return d

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> StepLog:
        """The log of :meth:`to_json`'s line."""
        return cls(**json.loads(line))


def read_log(path: Path) -> dict[int, StepLog]:
    """The steps logged in ``path``, by step number. A last line cut short by a kill is
    ignored; any other bad line is an error."""
    lines = path.read_text().split("\n") if path.exists() else []
    logs = {}
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            log = StepLog.from_json(line)
        except (json.JSONDecodeError, TypeError):
            if number == len(lines) - 1:  # a write the kill interrupted: no newline yet
                break
            raise ValueError(f"{path}, line {number + 1}: not a step log: {line[:80]!r}") from None
        logs[log.step] = log
    return logs


class Trainer:
    """The model, optimizer and data pipeline of one run, and their checkpoint items.

    Args:
        config: the run.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        dataset = SyntheticDataset.generate(
            config.seed, config.num_examples, config.features, config.classes
        )
        # One compiled initialisation instead of a dozen eager ops, each compiled on first use.
        self.model = nnx.jit(
            lambda: MLP(config.features, config.hidden, config.classes, rngs=nnx.Rngs(config.seed))
        )()
        self.optimizer = make_optimizer(self.model, config.learning_rate)
        self.manager = MetadataManager(rngs=nnx.Rngs(metadata=config.seed + 1), track_batches=True)
        self.source = AugmentedSource(dataset, config.batch_size, config.seed, self.manager)
        self.step = 0

    def train_step(self) -> StepLog:
        """Trains on the next batch; returns the step's log."""
        batch = self.source.next_batch()
        loss = train_step(
            self.model,
            self.optimizer,
            batch.x,
            batch.y,
            batch.records.rng_key,
            noise=self.config.noise,
        )
        log = StepLog.of(self.step, loss, batch.records)
        self.step += 1
        return log

    def save_args(self) -> ocp.args.Composite:
        """The checkpoint of the current state: model, optimizer and metadata manager."""
        return ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(self.model))),
            optimizer=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(self.optimizer))),
            data=MetadataManagerSave(self.manager),
        )

    def restore(self, checkpointer: ocp.CheckpointManager, step: int) -> None:
        """Restores checkpoint ``step`` into this trainer: the model and optimizer in place,
        and the source's manager replaced by the restored one."""
        model_state = nnx.state(self.model)
        optimizer_state = nnx.state(self.optimizer)
        restored = checkpointer.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(nnx.to_pure_dict(model_state)),
                optimizer=ocp.args.StandardRestore(nnx.to_pure_dict(optimizer_state)),
                data=MetadataManagerRestore(self.manager),
            ),
        )
        nnx.replace_by_pure_dict(model_state, restored["model"])
        nnx.update(self.model, model_state)
        nnx.replace_by_pure_dict(optimizer_state, restored["optimizer"])
        nnx.update(self.optimizer, optimizer_state)
        self.manager = self.source.manager = restored["data"]  # a new manager, as saved
        self.step = step


def checkpoint_manager(directory: Path) -> ocp.CheckpointManager:
    """An async CheckpointManager over ``directory`` that keeps the two latest steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    return ocp.CheckpointManager(directory, options=options)


def run(
    config: RunConfig,
    log_path: Path,
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_save: Callable[[int], None] | None = None,
) -> Iterator[StepLog]:
    """Runs ``config``, appending each step's log to ``log_path``, and yields the logs.

    Args:
        config: the run.
        log_path: the JSON-lines log; created, or truncated.
        checkpoints: where to save a checkpoint after every ``config.save_every`` steps;
            ``None`` for a run without checkpoints.
        resume: restore the latest checkpoint in ``checkpoints`` first (if there is one).
        on_start: called with the first step to train (0, or the step restored).
        on_save: called with the step number right after each ``save`` has returned;
            the async save's writes are then still in flight.

    Yields:
        Each step's log, once it is written.
    """
    trainer = Trainer(config)
    checkpointer = checkpoint_manager(checkpoints) if checkpoints is not None else None
    try:
        latest = checkpointer.latest_step() if resume and checkpointer is not None else None
        if latest is not None:
            trainer.restore(checkpointer, latest)
        if on_start is not None:
            on_start(trainer.step)
        with log_path.open("w") as log_file:
            while trainer.step < config.steps:
                log = trainer.train_step()
                log_file.write(log.to_json() + "\n")
                log_file.flush()  # a SIGKILL loses only what is still in this process
                yield log
                if checkpointer is not None and trainer.step % config.save_every == 0:
                    checkpointer.save(trainer.step, args=trainer.save_args())
                    if on_save is not None:
                        on_save(trainer.step)
        if checkpointer is not None:
            checkpointer.wait_until_finished()
    finally:
        if checkpointer is not None:
            checkpointer.close()
