"""Events no frame can carry (a lone UTF-16 surrogate in a text): dropped one by one.

Every door refuses such text (protocol.check_unicode, auth.verify, the admin API's bodies), so
this is the last line on the hot path: an event that slipped through costs that event only,
never the other events of its room, the other rooms of the tick or the later ticks. Each drop
is counted (`liveroom_events_unencodable_total`); a WARNING line at most every 10 s.
"""

from __future__ import annotations

import logging
import time

from server import metrics
from server.broker.base import Event
from server.logs import RefusalLog
from server.wire import protocol

_warnings = RefusalLog(logging.getLogger("liveroom.encode"))


def encodable_only(room_id: str, events: list[Event]) -> list[Event]:
    """The events that encode; the others are counted and dropped (called after an encode failed)."""
    kept = [event for event in events if protocol.encodable(event)]
    dropped = len(events) - len(kept)
    if dropped:
        metrics.unencodable_events.inc(dropped)
        _warnings.refused(
            f"{dropped} event(s) of room {room_id} could not be encoded (dropped)", time.monotonic()
        )
    return kept
