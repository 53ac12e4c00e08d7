"""The room sequencing rule: one tick of a room in, sequenced events and the new stream state out.

Every place that numbers a room's events applies this rule and no other: the in-memory broker
calls `sequence`, the Redis broker calls it while it numbers alone through an outage, and the
publish script in server/broker/redis_scripts.py is the same rule written in Lua (a differential
property test, tests/test_sequencing.py, feeds both the same ticks and compares the output).

The rule, for one tick of one room reported by one node:
1. No stream yet (first use, or its state was lost), or the stream is behind what the reporting
   node already delivered under its epoch (the store came back from an older copy, e.g. an RDB
   snapshot): a new epoch, seq 0, nothing counted, so no (epoch, seq) names two events.
2. The tick's events get the next sequence numbers, in order.
3. likes_delta > 0: a `likes` event with the new total and the delta.
4. local_online reported (not None): the node's count is recorded (0 removes it) with a
   deadline of clock + presence_ttl; every node whose deadline has passed is dropped; online is
   the sum of the remaining counts. A `presence` event follows only when (online, unique)
   differs from the last one published in this stream.
Pure: no clock, no I/O, no randomness (the caller passes the epoch a new stream would take).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from server.room.state import system_event

Event = dict[str, Any]
NEVER = 1 << 62  # a presence deadline that does not pass (one node: nobody else to outlive)


@dataclass(frozen=True, slots=True)
class StreamState:
    """What a room's sequencing remembers between ticks."""

    epoch: str
    seq: int = 0
    likes: int = 0
    online: int | None = None  # last published in a `presence` event (None: none yet)
    unique: int | None = None
    presence: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # node -> (count, deadline)


@dataclass(frozen=True, slots=True)
class Tick:
    """One node's tick of one room.

    unique: the room's distinct-viewer count after adding this tick's joiners (the store counts
    them: a set in memory, a HyperLogLog in Redis); read only when local_online is reported.
    clock/presence_ttl: ms on the presence clock (Redis' own clock with Redis) and the time a
    node's count lives without a new report.
    """

    node: str
    now: int  # `ts` of the events the room originates
    events: Sequence[Event] = ()
    likes_delta: int = 0
    local_online: int | None = None
    unique: int = 0
    clock: int = 0
    presence_ttl: int = NEVER
    seen: tuple[str, int] | None = None  # the newest (epoch, seq) the node delivered from the store


def sequence(state: StreamState | None, tick: Tick, new_epoch: str) -> tuple[list[Event], StreamState]:
    """Apply one tick: the events to publish (each a new dict with its `seq`) and the new state."""
    seen = tick.seen
    if state is None or (seen is not None and seen[0] == state.epoch and state.seq < seen[1]):
        state = StreamState(epoch=new_epoch)
    seq = state.seq
    out: list[Event] = []
    for event in tick.events:
        seq += 1
        out.append({**event, "seq": seq})
    likes = state.likes
    if tick.likes_delta > 0:
        likes += tick.likes_delta
        seq += 1
        out.append({**system_event("likes", tick.now, total=likes, delta=tick.likes_delta), "seq": seq})
    online, unique, presence = state.online, state.unique, state.presence
    if tick.local_online is not None:
        counts = dict(presence)
        if tick.local_online > 0:
            counts[tick.node] = (tick.local_online, tick.clock + tick.presence_ttl)
        else:
            counts.pop(tick.node, None)
        presence = {node: entry for node, entry in counts.items() if entry[1] > tick.clock}
        total = sum(count for count, _ in presence.values())
        if total != online or tick.unique != unique:
            online, unique = total, tick.unique
            seq += 1
            out.append({**system_event("presence", tick.now, online=online, unique=unique), "seq": seq})
    return out, replace(state, seq=seq, likes=likes, online=online, unique=unique, presence=presence)
