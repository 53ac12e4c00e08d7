"""The facts analytics is computed from: one small record per join, leave or interaction.

Kept apart from the aggregator and the stores so both depend only on this shape, and so
a record has one compact wire form (a JSON list) in Redis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

DAY = 86400

# kinds: viewer presence, then interactions, then client-reported media stats
JOIN, LEAVE, DANMAKU, LIKE, DM, FIRST_FRAME = "join", "leave", "danmaku", "like", "dm", "first_frame"
INTERACTIONS = frozenset({DANMAKU, LIKE, DM})
# the room's questions (server.node.answers): QUESTION uid=asker, session=label, value=the danmaku's seq;
# ANSWER uid="assistant"|"host", value=the answered seq (paired with its QUESTION when aggregating)
QUESTION, ANSWER = "question", "answer"


@dataclass(frozen=True, slots=True)
class Record:
    """One fact about a room. ts: seconds since the epoch (from the injected clock).

    session pairs a join with its leave (unique per connection across nodes);
    value: a like's count, 1 for a DM to a host (0 to anyone else), a first frame's ms.
    """

    kind: str
    room: str
    uid: str
    ts: float
    session: str = ""
    value: int = 0

    def encode(self) -> str:
        return json.dumps([self.kind, self.uid, self.ts, self.session, self.value], separators=(",", ":"))

    @classmethod
    def decode(cls, room: str, raw: str | bytes) -> Record:
        kind, uid, ts, session, value = json.loads(raw)
        return cls(kind, room, uid, float(ts), session, int(value))


def day_of(ts: float) -> int:
    """UTC day number (days since 1970-01-01): the unit of `day` windows and return rate."""
    return int(ts // DAY)
