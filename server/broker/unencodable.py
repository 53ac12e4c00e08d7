"""Events no frame can carry (a lone UTF-16 surrogate in a text): dropped one by one.

Every door refuses such text (protocol.check_unicode, auth.verify, the admin API's bodies), so
this is the last line on the hot path: an event that slipped through costs that event only,
never the other events of its room, the other rooms of the tick or the later ticks. Each drop
is counted (`liveroom_events_unencodable_total`); a WARNING line at most every 10 s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from server import metrics
from server.broker.base import Event
from server.logs import RefusalLog
from server.room.sequencing import StreamState, Tick, sequence
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


def sequence_and_encode(
    room_id: str, stream: StreamState | None, tick: Tick, epoch: str
) -> tuple[list[Event], StreamState, bytes]:
    """Number a tick and encode its batch before the stream moves on (both brokers' numbering):
    when an event cannot be encoded, the tick is numbered again without it, so it is dropped
    alone and leaves no gap in the room's seqs. Returns (sequenced events, new stream, frame)."""
    sequenced, new_stream = sequence(stream, tick, epoch)
    try:
        return sequenced, new_stream, protocol.batch_frame(room_id, sequenced, epoch) if sequenced else b""
    except protocol.ENCODE_ERRORS:
        tick = replace(tick, events=encodable_only(room_id, list(tick.events)))
        sequenced, new_stream = sequence(stream, tick, epoch)
        return sequenced, new_stream, protocol.batch_frame(room_id, sequenced, epoch) if sequenced else b""
