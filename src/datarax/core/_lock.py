"""The lock that makes every read and update of a manager's position one instant."""

from __future__ import annotations

import threading

POSITION_LOCK = threading.RLock()
"""Held by every update of a ``MetadataManager``'s counters or ``metadata`` stream count,
and by ``read_position``: a loader thread creating records while another thread saves is
never seen between a counter update and the matching stream count. Re-entrant, so that a
locked method may fall back to another locked method."""
