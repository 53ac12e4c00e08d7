"""Fan-out: write one encoded frame to every local connection of a room.

The frame is encoded once per room per tick (the broker's batch), and so is its WebSocket
framing: a server's frames are not masked, so the header and payload are the same bytes for
every viewer of the room, written to each socket as they are (one transport.write each, as
close to a raw socket write as Python gets). A connection this does not fit (a negotiated
extension such as permessage-deflate, which compresses per connection, or a write of its own
queued in websockets' protocol) is written through websockets itself, as before. That writing
is the edge's (`Writer`, implemented by server.edge.client.WsWriter: the only code that knows
a connection is a WebSocket); this module decides who gets the frame. Slow sockets are skipped
rather than buffered without bound, told how many batches they missed once they catch up, and
closed (4408) after too many in a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from server import metrics
from server.wire import protocol
from server.wire.protocol import ErrorCode

if TYPE_CHECKING:
    from server.config import Config
    from server.delivery.peer import Peer


class Writer(Protocol):
    """How frames reach connections' sinks (`Peer.sink`, opaque here): the edge implements it."""

    def backlog(self, sink: Any) -> int:
        """Bytes waiting to be sent; -1 when the sink takes no frame now (closing, a send of
        its own in progress)."""

    def write(self, sinks: list[Any], frame: bytes) -> None:
        """One frame to many sinks, without waiting (framed once where it can be)."""

    def write_one(self, sink: Any, frame: bytes) -> None:
        """A frame of its own to one sink, without waiting."""


class RoomFanout:
    def __init__(self, config: Config, writer: Writer) -> None:
        self.config = config  # write_buffer_limit, max_dropped_batches (read per write: tunable live)
        self.writer = writer

    def write(self, clients: Iterable[Peer], frame: bytes, own: Mapping[Peer, bytes] | None = None) -> None:
        """Write one encoded frame to many sockets, skipping those that cannot keep up.

        own: connections that get another frame instead (a sampled frame with their own
        danmaku added back, delivery/budget.py)."""
        limit = self.config.write_buffer_limit
        max_dropped = self.config.max_dropped_batches
        writer = self.writer
        backlog = writer.backlog
        ready = []
        written = 0
        for client in clients:
            if client.closing:  # e.g. reset with its room's stream: no batch of the next one
                continue
            sink = client.sink
            waiting = backlog(sink)
            if waiting < 0:
                continue  # closing, or a fragmented send: what websockets.broadcast skips too
            if waiting > limit:
                client.dropped += 1
                metrics.dropped_batches.inc()
                if client.dropped == max_dropped:
                    metrics.slow_consumer_closes.inc()
                    client.close(int(ErrorCode.SLOW_CONSUMER), "too slow: reconnect")
                continue
            if client.dropped:
                client.send(protocol.dropped_frame(client.dropped))
                client.dropped = 0
            if own and client in own:
                writer.write_one(sink, own[client])
                written += 1
                continue
            ready.append(sink)
        if ready:
            writer.write(ready, frame)
        metrics.hot.fanout_writes += written + len(ready)
