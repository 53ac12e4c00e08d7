"""What the guard decides about a connection's message or refusal, as data.

Why a module of its own: the sans-I/O connection (server/edge/connection.py) turns these into
its outputs; the guard never writes to a peer or schedules a write itself, and the connection's
tests build these values without a Guard.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Shadowed:
    """The message is handled here and goes no further: only its sender gets `frame`, after
    `delay` seconds (a shadow-dropped danmaku echoed at the next tick, a DM's made-up ack at once)."""

    frame: bytes
    delay: float = 0.0


class Strike(enum.Enum):
    """What a refusal costs a connection."""

    TELL = "tell"  # send the error frame
    QUIET = "quiet"  # the client does not read its errors (write buffer full): no frame
    OUT = "out"  # its last strike: refuse it with 4307 (closed) instead of the error frame
