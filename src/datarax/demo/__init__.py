"""The main job: train, get killed with SIGKILL mid-checkpoint, resume, match bit for bit.

``python -m datarax.demo --help`` (or the ``datarax-demo`` console script) explains the
options. The modules, one concept each:

- :mod:`datarax.demo.data`: the seeded synthetic dataset and the data source whose records
  get metadata from a ``MetadataManager`` and are augmented with their own ``rng_key``.
- :mod:`datarax.demo.model`: the Flax NNX MLP, its optax optimizer and training step.
- :mod:`datarax.demo.training`: one run, checkpointed with an async ``CheckpointManager``.
- :mod:`datarax.demo.worker`: a run in a child process (``python -m datarax.demo.worker``).
- :mod:`datarax.demo.harness`: the scenario (reference, kill, resume) and its verdict.
- :mod:`datarax.demo.child`: a worker process, in its own process group, always reaped.
- :mod:`datarax.demo.plot`: the loss-curve figure.
- :mod:`datarax.demo.environment`: the settings under which runs compute the same bits.
"""

from datarax.demo.cli import main

__all__ = ["main"]
