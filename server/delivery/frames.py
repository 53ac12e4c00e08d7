"""At most one frame per room per tick to a node's viewers, whatever the number of nodes.

With several nodes, every node's tick produces a batch for a busy room, so without a rule a
viewer would get one frame per sending node per tick. The rule: a room's first batch after
a quiet tick goes out at once (its bytes as they came, nothing re-encoded); batches arriving
within tick_ms of the last frame wait and leave together, merged into one frame encoded once,
tick_ms after that frame. Latency added: at most one tick; frames per viewer: 1000/tick_ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from server.broker.base import Event
from server.broker.unencodable import encodable_only
from server.wire import protocol

Send = Callable[[str, bytes], None]  # (room, frame) -> written to the room's local viewers


@dataclass(slots=True)
class _Gate:
    next_at: float = 0.0  # loop time before which another frame must wait
    held: list[Event] = field(default_factory=list)
    epoch: str = ""  # the stream the held events' seqs belong to (every frame names it)
    timer: asyncio.TimerHandle | None = None


class RoomFrames:
    def __init__(self, period: float, send: Send) -> None:
        self._period = period
        self._send = send
        self._gates: dict[str, _Gate] = {}
        self.merged = 0  # batches folded into another frame (for benchmarks and metrics)

    def offer(self, room_id: str, epoch: str, frame: bytes, events: list[Event]) -> None:
        """A batch for the room's viewers: sent now, or held for the room's next frame.

        Events of two epochs never share a frame: a batch of another epoch sends what is held
        first (a stream change is rare; its frame goes out at once)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        gate = self._gates.get(room_id)
        if gate is None:
            gate = self._gates[room_id] = _Gate()
        if gate.held and gate.epoch != epoch:
            self.flush(room_id)
            gate.next_at = now
        if not gate.held and now >= gate.next_at:
            gate.next_at = now + self._period
            self._send(room_id, frame)
            return
        if gate.held:
            self.merged += 1
        gate.epoch = epoch
        gate.held.extend(events)
        if gate.timer is None:
            gate.timer = loop.call_at(gate.next_at, self.flush, room_id)

    def flush(self, room_id: str) -> None:
        """Send what the room holds now (its timer, a join about to read the room's state)."""
        gate = self._gates.get(room_id)
        if gate is None:
            return
        if gate.timer is not None:
            gate.timer.cancel()
            gate.timer = None
        if not gate.held:
            return
        events, gate.held = gate.held, []
        gate.next_at = asyncio.get_running_loop().time() + self._period
        try:
            frame = protocol.batch_frame(room_id, events, gate.epoch or None)
        except protocol.ENCODE_ERRORS:  # an event no frame can carry costs that event alone
            frame = protocol.batch_frame(room_id, encodable_only(room_id, events), gate.epoch or None)
        self._send(room_id, frame)

    def flush_all(self) -> None:
        for room_id in list(self._gates):
            self.flush(room_id)

    def drop(self, room_id: str) -> None:
        """Forget the room (closed, or reset: what it held is no longer valid)."""
        gate = self._gates.pop(room_id, None)
        if gate is not None and gate.timer is not None:
            gate.timer.cancel()
