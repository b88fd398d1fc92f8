"""Runnable examples of datarax-metadata, run from a checkout (not part of the wheel)."""
