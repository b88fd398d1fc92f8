"""Core datarax modules."""
