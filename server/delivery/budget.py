"""The event budget of a room's frame: above a rate, viewers see a fair sample of the chat.

A room of 100,000 viewers at 1,000 danmaku/s cannot show every viewer every message (nobody
reads 50 a frame, and the bytes would cost ~100 KiB/s per viewer). Above `above` danmaku/s
(the room's rate, measured over the last second), a frame carries at most `per_frame`
ordinary danmaku, a uniform random sample kept in sequence order; every other event is never
dropped: likes, presence, pins, replies, moderation and system events, live/host changes, and
the danmaku of hosts, moderators and the assistant (they carry a `role`). The frame says how
many it left out (`sampled`) and the last seq it covers (`upto`), so counts stay honest and a
client does not take the gaps for loss. The sample is drawn once per room per tick, so the
frame is still encoded once; a viewer whose own danmaku was left out gets a frame of its own
with them added back (one extra encode per sender, not per viewer). History and resume are
untouched: the broker keeps every event.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from server.broker.base import Event

WINDOW = 1.0  # seconds over which a room's rate is measured


def sampleable(event: Event) -> bool:
    """Only a viewer's danmaku may be left out of a frame (staff danmaku carry a `role`)."""
    return event["t"] == "danmaku" and "role" not in event


@dataclass(slots=True)
class Cut:
    """One frame after the budget: what every viewer gets, and what was left out."""

    events: list[Event]  # the never-dropped events and the sample, in sequence order
    left: list[Event]  # ordinary danmaku not carried (their senders still get their own)
    upto: int  # the last seq the frame covers (left-out events included)


@dataclass(slots=True)
class _Rate:
    started: float = 0.0  # start of the current window
    count: int = 0  # sampleable danmaku in the current window
    before: int = 0  # in the window before it

    def add(self, now: float, n: int) -> float:
        """Count n danmaku at `now`; the room's rate per second over the last WINDOW."""
        elapsed = now - self.started
        if elapsed >= WINDOW:
            self.before = self.count if elapsed < 2 * WINDOW else 0
            self.count = 0
            self.started = now - (elapsed % WINDOW if elapsed < 2 * WINDOW else 0.0)
            elapsed = now - self.started
        self.count += n
        return (self.count + self.before * (1 - elapsed / WINDOW)) / WINDOW


@dataclass
class Budget:
    above: float  # danmaku/s in a room above which frames carry a sample (0: never)
    per_frame: int  # ordinary danmaku a sampled frame carries
    rng: random.Random = field(default_factory=random.Random)
    _rates: dict[str, _Rate] = field(default_factory=dict)

    def cut(self, room_id: str, events: list[Event], now: float) -> Cut | None:
        """The frame's events under the budget, or None when the frame carries everything."""
        if self.above <= 0:
            return None
        ordinary = [i for i, e in enumerate(events) if sampleable(e)]
        rate = self._rates.get(room_id)
        if rate is None:
            rate = self._rates[room_id] = _Rate(started=now)
        if rate.add(now, len(ordinary)) <= self.above or len(ordinary) <= self.per_frame:
            return None
        keep = set(self.rng.sample(ordinary, self.per_frame))
        kept: list[Event] = []
        left: list[Event] = []
        for i, event in enumerate(events):
            (left if i not in keep and sampleable(event) else kept).append(event)
        return Cut(kept, left, max(e.get("seq", 0) for e in events))

    def forget(self, room_id: str) -> None:
        self._rates.pop(room_id, None)


def with_own(cut: Cut, mine: list[Event]) -> list[Event]:
    """The frame's events with one viewer's own left-out danmaku put back, in sequence order."""
    return sorted([*cut.events, *mine], key=lambda e: e.get("seq", 0))
