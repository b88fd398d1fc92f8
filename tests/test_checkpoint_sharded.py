"""A batched Metadata sharded over 8 CPU devices, in a subprocess (the device count must be
set before JAX initialises, and this process's JAX is already initialised)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).parent / "checkpoint_sharded_script.py"


def test_sharded_batch_restores_with_the_targets_sharding_and_detects_damage():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stdout.strip().endswith("OK"), result.stdout
