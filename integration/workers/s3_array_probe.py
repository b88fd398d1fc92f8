"""Tries to save a tensorstore array to ``s3://`` with Orbax; writes what happened as JSON.

Two attempts, each a synchronous ``CheckpointManager`` with ``CommitFileTemporaryPath``
saving ``PyTreeSave({"w": arange(4)})`` as step 1: with Orbax's default OCDBT format
(``ocdbt``), and with ``PyTreeCheckpointHandler(use_ocdbt=False)`` (``plain``). Writes
``{"ocdbt": outcome, "plain": outcome}``, an outcome being ``"saved"`` or
``"<ExceptionType>: <message>"``. Run it in an empty working directory: Orbax may write
there (see ``test_orbax_cannot_write_arrays_to_s3``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax.numpy as jnp
import orbax.checkpoint as ocp


def attempt(directory: str, handlers: dict[str, Any] | None) -> str:
    """Saves one array under ``directory``; ``"saved"`` or the error."""
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False,
        temporary_path_class=ocp.path.atomicity.CommitFileTemporaryPath,
    )
    args = ocp.args.Composite(model=ocp.args.PyTreeSave({"w": jnp.arange(4)}))
    try:
        with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as mngr:
            mngr.save(1, args=args)
    except Exception as e:  # report whatever Orbax raises, by type and message
        return f"{type(e).__name__}: {e}"
    return "saved"


def main() -> int:
    bucket = sys.argv[1]
    plain = {"model": ocp.PyTreeCheckpointHandler(use_ocdbt=False)}
    outcomes = {
        "ocdbt": attempt(f"s3://{bucket}/ocdbt", None),
        "plain": attempt(f"s3://{bucket}/plain", plain),
    }
    print(json.dumps(outcomes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
