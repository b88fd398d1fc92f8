"""One run of the demo: a Flax NNX MLP trained with optax on a seeded synthetic dataset.

The data keeps no position of its own: the epoch and the index in it live in the
``MetadataManager``, and an epoch's order is a function of the seed and the epoch, so
checkpointing the manager with the model and the optimizer state is enough to resume the
stream exactly. Each step is logged as a JSON line, the loss as its float32 bit pattern.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from datarax.checkpoint import MetadataManagerRestore, MetadataManagerSave
from datarax.core.metadata import MetadataManager
from examples.demo.processes import wait_to_be_killed

BATCH, EXAMPLES, FEATURES, HIDDEN, CLASSES = 32, 400, 16, 64, 4
LEARNING_RATE, NOISE = 0.01, 0.1  # NOISE: standard deviation of the augmentation noise
RECORD_FIELDS = ("index", "epoch", "global_step", "batch_idx", "record_key")
STATES = ("model", "optimizer")  # checkpointed with the manager
PROTOCOL = "@datarax "
"""Prefix of the lines a checkpointed run writes for the demo: ``start STEP``, ``saving STEP``."""
Logs = Mapping[int, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run; two runs with equal configs compute the same bits. ``seed`` seeds the dataset,
    the epoch orders, the parameters and the records' keys."""

    steps: int
    seed: int
    save_every: int

    def __post_init__(self) -> None:
        if min(self.steps, self.save_every) < 1 or not 0 <= self.seed < 2**31 - 1:
            raise ValueError(f"steps, save_every must be >= 1 and seed in 0..2**31-2: {self}")


def mlp(rngs: nnx.Rngs) -> nnx.Sequential:
    """Two hidden ReLU layers and a linear read-out of class logits."""
    sizes = (FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)
    hidden1, hidden2, out = (nnx.Linear(n_in, n_out, rngs=rngs) for n_in, n_out in sizes)
    return nnx.Sequential(hidden1, nnx.relu, hidden2, nnx.relu, out)


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array,
               keys: jax.Array) -> jax.Array:  # fmt: skip
    """Augments each record with its own key (Gaussian noise, 10% feature dropout), takes
    one Adam step, returns the loss."""

    def augment(key: jax.Array, row: jax.Array) -> jax.Array:
        k_noise, k_mask = jax.random.split(key)
        keep = jax.random.bernoulli(k_mask, 0.9, row.shape)
        return jnp.where(keep, row, 0.0) + NOISE * jax.random.normal(k_noise, row.shape)

    x = jax.vmap(augment)(keys, x)
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()  # noqa: E731
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def loss(log: dict[str, Any]) -> float:
    """A step log's loss, decoded from its bit pattern."""
    return float(np.uint32(log["loss_bits"]).view(np.float32))


class Trainer:
    """The dataset, model, optimizer and ``MetadataManager`` of one run, at ``step``."""

    def __init__(self, config: RunConfig) -> None:
        self.config, self.step = config, 0
        rng = np.random.default_rng([config.seed, 0])  # PCG64: the same bits everywhere
        centres = rng.normal(0.0, 0.5, size=(CLASSES, FEATURES))  # overlapping clusters
        y = rng.integers(0, CLASSES, size=EXAMPLES)
        x = centres[y] + rng.normal(0.0, 1.0, size=(EXAMPLES, FEATURES))
        self.x, self.y = x.astype(np.float32), y.astype(np.int32)
        # One compiled initialisation instead of a dozen eager ops, each compiled on first use.
        self.model = nnx.jit(lambda: mlp(nnx.Rngs(config.seed)))()
        self.optimizer = nnx.Optimizer(self.model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
        self.manager = MetadataManager(rngs=nnx.Rngs(metadata=config.seed + 1), track_batches=True)

    def train_step(self) -> dict[str, Any]:
        """Trains on the next batch, in the order ``permutation(seed, epoch)`` (a new epoch
        where the rest of one would be short); returns the step's log."""
        if self.manager.state.get_value()["index"] + BATCH > EXAMPLES:
            self.manager.next_epoch()
        state = self.manager.state.get_value()
        order = np.random.default_rng([self.config.seed, 1, state["epoch"]]).permutation(EXAMPLES)
        keys = order[state["index"] : state["index"] + BATCH]
        records = self.manager.create_batch_metadata(keys)
        self.manager.next_batch()
        loss = train_step(self.model, self.optimizer, self.x[keys], self.y[keys], records.rng_key)
        log = {"step": self.step, "loss_bits": int(np.asarray(loss, np.float32).view(np.uint32))}
        log |= {name: np.asarray(getattr(records, name)).tolist() for name in RECORD_FIELDS}
        log["rng_key"] = np.asarray(jax.random.key_data(records.rng_key)).tolist()
        self.step += 1
        return log

    def args(self, arrays: type, manager: type) -> ocp.args.Composite:
        """The checkpoint's items, ``arrays(...)`` of the model's and the optimizer's states
        and ``manager(...)`` of the ``MetadataManager``: the save or the restore arguments."""
        states = {name: nnx.to_pure_dict(nnx.state(getattr(self, name))) for name in STATES}
        items = {name: arrays(state) for name, state in states.items()}
        return ocp.args.Composite(**items, data=manager(self.manager))

    def restore(self, checkpointer: ocp.CheckpointManager, step: int) -> None:
        """Restores checkpoint ``step``: the model and the optimizer in place, and the
        restored manager (a new one, as saved) in place of this run's."""
        args = self.args(ocp.args.StandardRestore, MetadataManagerRestore)
        restored = checkpointer.restore(step, args=args)
        for name in STATES:
            state = nnx.state(getattr(self, name))
            nnx.replace_by_pure_dict(state, restored[name])
            nnx.update(getattr(self, name), state)
        self.manager, self.step = restored["data"], step


def run(config: RunConfig, log_path: Path, checkpoints: Path | None = None,
        announce_save: int | None = None, tag: str = "") -> None:  # fmt: skip
    """Runs ``config``, writing each step's log to ``log_path`` and a progress line (after
    ``tag``) every 10 steps and at the last. With ``checkpoints``, it resumes from the
    latest checkpoint there, if any, and says so (``start STEP``), saves there every
    ``save_every`` steps, and after ``save(announce_save)`` says so and waits to be killed."""
    trainer = Trainer(config)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2,
        enable_async_checkpointing=True,
        # Old steps are renamed into `deleted/` (one atomic rename) rather than deleted file
        # by file: a kill during cleanup never leaves a half-deleted step listed. Orbax
        # never empties `deleted/`; see docs/guides/resume-training.md.
        todelete_subdir="deleted",
    )
    mngr = ocp.CheckpointManager(checkpoints, options=options) if checkpoints else None
    with mngr or contextlib.nullcontext():  # closing it waits for the saves in flight
        if mngr:
            if (latest := mngr.latest_step()) is not None:
                trainer.restore(mngr, latest)
            print(f"{PROTOCOL}start {trainer.step}", flush=True)
        with log_path.open("w") as log_file:
            while trainer.step < config.steps:
                log = trainer.train_step()
                log_file.write(json.dumps(log, separators=(",", ":")) + "\n")
                log_file.flush()  # a SIGKILL loses only what is still in this process
                if trainer.step % 10 == 0 or trainer.step == config.steps:
                    progress = f"step {trainer.step:4d}/{config.steps}  loss {loss(log):.6f}"
                    print(f"{tag}{progress}", flush=True)
                if mngr and trainer.step % config.save_every == 0:
                    args = trainer.args(ocp.args.StandardSave, MetadataManagerSave)
                    mngr.save(trainer.step, args=args)
                    if trainer.step == announce_save:
                        wait_to_be_killed(f"{PROTOCOL}saving {trainer.step}")
