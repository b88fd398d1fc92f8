"""The demo's model: a small Flax NNX MLP classifier, its optax optimizer and training step."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from datarax.demo.data import augment


class MLP(nnx.Module):
    """Two hidden ReLU layers and a linear read-out of class logits."""

    def __init__(self, features: int, hidden: int, classes: int, *, rngs: nnx.Rngs) -> None:
        self.hidden1 = nnx.Linear(features, hidden, rngs=rngs)
        self.hidden2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.hidden1(x))
        x = nnx.relu(self.hidden2(x))
        return self.out(x)


def make_optimizer(model: MLP, learning_rate: float) -> nnx.Optimizer:
    """Adam over the model's parameters."""
    return nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)


@nnx.jit(static_argnames="noise")
def train_step(
    model: MLP,
    optimizer: nnx.Optimizer,
    x: jax.Array,
    y: jax.Array,
    keys: jax.Array,
    noise: float,
) -> jax.Array:
    """Augments the batch with the records' keys, takes one Adam step, returns the loss."""
    x = augment(keys, x, noise)

    def loss_fn(model: MLP) -> jax.Array:
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss
