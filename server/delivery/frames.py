"""At most one frame per room per tick to a node's viewers, whatever the number of nodes.

With several nodes, every node's tick produces a batch for a busy room, so without a rule a
viewer would get one frame per sending node per tick. The rule works in windows of tick_ms,
each centred on the batch that opened it: the first batch of a window goes out at once (its
bytes as they came when nothing was held), a batch arriving later in the same window is held
and leaves with the next window's first batch, merged into one frame encoded once (or, if no
batch comes, one tick after that window would have ended).

A room fed by one node (one node, or one busy node) gets one batch per tick, each in a window
of its own: nothing is held, so the rule adds no latency; jitter up to half a tick is
absorbed because every window is re-centred on the batch that opens it (a schedule kept from
when a timer fired would drift behind the tick and hold most batches). With several nodes
feeding the room, the batches of the others wait at most until the next window's first one:
one frame per room per tick, at most one tick (two when the room then goes quiet) added to
the batches that are merged. A big room may be paced slower than the tick (`pace`: its own
period, from its audience on this node): its windows are longer, so more batches merge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from server.broker.base import Event
from server.broker.unencodable import encodable_only
from server.wire import protocol

# (room, epoch, frame, its events) -> written to the room's local viewers
Send = Callable[[str, str, bytes, list[Event]], None]


@dataclass(slots=True)
class _Gate:
    ends: float = 0.0  # loop time the room's current window ends (a frame already went in it)
    held: list[Event] = field(default_factory=list)
    epoch: str = ""  # the stream the held events' seqs belong to (every frame names it)
    timer: asyncio.TimerHandle | None = None


class RoomFrames:
    def __init__(
        self,
        period: float,
        send: Send,
        clock: Callable[[], float] | None = None,
        pace: Callable[[str], float] | None = None,
    ) -> None:
        self._period = period
        self._send = send
        self._pace = pace  # a room's own period, when its audience lengthens it (room-size pacing)
        self._clock = clock  # the loop's time unless given (tests step it)
        self._gates: dict[str, _Gate] = {}
        self.merged = 0  # batches folded into another frame (for benchmarks and metrics)

    def offer(self, room_id: str, epoch: str, frame: bytes, events: list[Event]) -> None:
        """A batch for the room's viewers: sent now, or held for the room's next frame.

        Events of two epochs never share a frame: a batch of another epoch sends what is held
        first (a stream change is rare; its frame goes out at once)."""
        now = self._now()
        gate = self._gates.get(room_id)
        if gate is None:
            gate = self._gates[room_id] = _Gate()
        if gate.held and gate.epoch != epoch:
            self.flush(room_id)
            gate.ends = now
        period = self._pace(room_id) if self._pace is not None else self._period
        if now >= gate.ends:  # the first batch of a new window: out at once
            gate.ends = now + period / 2
            if gate.held:
                self.merged += 1
                events = gate.held + events
                gate.held = []
                self._cancel(gate)
                frame, events = _encode(room_id, events, epoch)
            self._send(room_id, epoch, frame, events)
            return
        if gate.held:
            self.merged += 1
        gate.epoch = epoch
        gate.held.extend(events)
        if gate.timer is None:  # the room may go quiet: then they leave a tick after the window
            gate.timer = asyncio.get_running_loop().call_at(gate.ends + period, self.flush, room_id)

    def flush(self, room_id: str) -> None:
        """Send what the room holds now (its timer, a join about to read the room's state)."""
        gate = self._gates.get(room_id)
        if gate is None:
            return
        self._cancel(gate)
        if not gate.held:
            return
        events, gate.held = gate.held, []
        period = self._pace(room_id) if self._pace is not None else self._period
        gate.ends = self._now() + period / 2
        frame, events = _encode(room_id, events, gate.epoch)
        self._send(room_id, gate.epoch, frame, events)

    def flush_all(self) -> None:
        for room_id in list(self._gates):
            self.flush(room_id)

    def drop(self, room_id: str) -> None:
        """Forget the room (closed, or reset: what it held is no longer valid)."""
        gate = self._gates.pop(room_id, None)
        if gate is not None:
            self._cancel(gate)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @staticmethod
    def _cancel(gate: _Gate) -> None:
        if gate.timer is not None:
            gate.timer.cancel()
            gate.timer = None


def _encode(room_id: str, events: list[Event], epoch: str) -> tuple[bytes, list[Event]]:
    """One frame of merged batches; an event no frame can carry costs that event alone."""
    try:
        return protocol.batch_frame(room_id, events, epoch or None), events
    except protocol.ENCODE_ERRORS:
        events = encodable_only(room_id, events)
        return protocol.batch_frame(room_id, events, epoch or None), events
