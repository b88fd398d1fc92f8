"""The process settings under which every run of the demo computes the same bits.

A run compared bit for bit with another must compile the same XLA programs: the harness
calls :func:`configure` before JAX starts its backend, and its child processes inherit the
environment, so the reference run and the killed and resumed runs share their flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DETERMINISTIC_XLA_FLAGS = (
    # Fast math would let XLA reassociate float arithmetic; keep IEEE semantics on CPU.
    "--xla_cpu_enable_fast_math=false",
    # On a GPU, reductions (e.g. of gradients) must not depend on atomics' ordering.
    "--xla_gpu_deterministic_ops=true",
)


def deterministic_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with :data:`DETERMINISTIC_XLA_FLAGS`
    added to ``XLA_FLAGS``, each once."""
    env = dict(os.environ if base is None else base)
    flags = env.get("XLA_FLAGS", "").split()
    flags += [flag for flag in DETERMINISTIC_XLA_FLAGS if flag not in flags]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def configure() -> dict[str, str]:
    """Gives this process :func:`deterministic_env`'s ``XLA_FLAGS``; returns the environment
    that child processes get. Call it before the first JAX computation."""
    env = deterministic_env()
    os.environ["XLA_FLAGS"] = env["XLA_FLAGS"]
    return env
