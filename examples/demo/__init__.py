"""Trains a small Flax NNX MLP with optax on a synthetic dataset whose records get their
metadata (index, epoch, step, RNG key) from a datarax MetadataManager; each record's
augmentation is drawn from its own rng_key. An async Orbax CheckpointManager saves the
model, the optimizer state and the MetadataManager together every few steps.

The demo trains an uninterrupted reference run, then the same run in a child process that
it kills with SIGKILL while an async save is in flight, then resumes that run in a fresh
process from the latest checkpoint. It prints whether the resumed run's records and losses
match the reference bit for bit (exit status 0 if they do, 1 if not), and writes a PNG of
the loss curves to the run directory.
"""
