"""Fan-out: write one encoded frame to every local connection of a room.

The frame is encoded once per room per tick (the broker's batch), and so is its WebSocket
framing: a server's frames are not masked, so the header and payload are the same bytes for
every viewer of the room, written to each socket as they are (one transport.write each, as
close to a raw socket write as Python gets). A connection this does not fit (a negotiated
extension such as permessage-deflate, which compresses per connection, or a write of its own
queued in websockets' protocol) is written through websockets itself, as before. Slow sockets
are skipped rather than buffered without bound, told how many batches they missed once they
catch up, and closed (4408) after too many in a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import websockets
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from server import metrics
from server.wire import protocol
from server.wire.protocol import ErrorCode

if TYPE_CHECKING:
    from server.config import Config
    from server.delivery.peer import Peer

OPEN = State.OPEN


def framed(payload: bytes) -> bytes:
    """A binary WebSocket frame as a server sends it (unmasked, no extension): header + payload."""
    return Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])


class RoomFanout:
    def __init__(self, config: Config) -> None:
        self.config = config  # write_buffer_limit, max_dropped_batches (read per write: tunable live)

    def write(self, clients: Iterable[Peer], frame: bytes, own: Mapping[Peer, bytes] | None = None) -> None:
        """Write one encoded frame to many sockets, skipping those that cannot keep up.

        own: connections that get another frame instead (a sampled frame with their own
        danmaku added back, delivery/budget.py)."""
        limit = self.config.write_buffer_limit
        max_dropped = self.config.max_dropped_batches
        wire: bytes | None = None  # the frame with its WebSocket header, built at the first use
        others = []  # connections websockets frames itself (extensions, its own writes pending)
        written = 0
        for client in clients:
            if client.closing:  # e.g. reset with its room's stream: no batch of the next one
                continue
            ws = client.ws
            transport = ws.transport
            if transport is None:
                continue
            if transport.get_write_buffer_size() > limit:
                client.dropped += 1
                metrics.dropped_batches.inc()
                if client.dropped == max_dropped:
                    metrics.slow_consumer_closes.inc()
                    client.close(int(ErrorCode.SLOW_CONSUMER), "too slow: reconnect")
                continue
            state = ws.protocol
            if state.state is not OPEN or ws.send_in_progress is not None:
                continue  # closing, or a fragmented send: what websockets.broadcast skips too
            if client.dropped:
                client.send(protocol.dropped_frame(client.dropped))
                client.dropped = 0
            if own and client in own:
                websockets.broadcast((ws,), own[client])
                written += 1
                continue
            if state.extensions or state.writes:
                others.append(ws)
                continue
            if wire is None:
                wire = framed(frame)
            transport.write(wire)
            written += 1
        if others:
            websockets.broadcast(others, frame)
        metrics.hot.fanout_writes += written + len(others)
