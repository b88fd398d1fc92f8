"""Integration tests: real processes, real SIGKILLs, real Orbax checkpoints."""
