"""Fan-out: write one encoded frame to every local connection of a room.

The frame is encoded once per room per tick (the broker's batch), and so is its WebSocket
framing: a server's frames are not masked, so the header and payload are the same bytes for
every viewer of the room, written to each socket as they are (one transport.write each, as
close to a raw socket write as Python gets). A connection this does not fit (a negotiated
extension such as permessage-deflate, which compresses per connection, or a write of its own
queued in websockets' protocol) is written through websockets itself, as before. That writing
is the edge's (`Writer`, implemented by server.edge.client.WsWriter: the only code that knows
a connection is a WebSocket, one loop per room frame as before); this module decides what a
slow connection costs: skipped rather than buffered without bound, told how many batches it
missed once it catches up, and closed (4408) after too many in a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from server import metrics
from server.wire import protocol
from server.wire.protocol import ErrorCode

if TYPE_CHECKING:
    from server.config import Config
    from server.delivery.peer import Peer


class Writer(Protocol):
    """How frames reach connections: the edge implements it (server.edge.client.WsWriter)."""

    def write(
        self,
        clients: Iterable[Peer],
        frame: bytes,
        own: Mapping[Peer, bytes] | None,
        limit: int,
        caught_up: Callable[[Peer], None],
    ) -> tuple[list[Peer], int]:
        """Write `frame` (or `own[client]`) to every open connection whose write buffer holds at
        most `limit` bytes, without waiting; call `caught_up(client)` first for a connection
        with batches `dropped`. Returns (connections skipped for a full buffer, frames written)."""


class RoomFanout:
    def __init__(self, config: Config, writer: Writer) -> None:
        self.config = config  # write_buffer_limit, max_dropped_batches (read per write: tunable live)
        self.writer = writer

    def write(self, clients: Iterable[Peer], frame: bytes, own: Mapping[Peer, bytes] | None = None) -> None:
        """Write one encoded frame to many sockets, skipping those that cannot keep up.

        own: connections that get another frame instead (a sampled frame with their own
        danmaku added back, delivery/budget.py)."""
        full, written = self.writer.write(clients, frame, own, self.config.write_buffer_limit, _caught_up)
        if full:
            max_dropped = self.config.max_dropped_batches
            for client in full:
                client.dropped += 1
                metrics.dropped_batches.inc()
                if client.dropped == max_dropped:
                    metrics.slow_consumer_closes.inc()
                    client.close(int(ErrorCode.SLOW_CONSUMER), "too slow: reconnect")
        metrics.hot.fanout_writes += written


def _caught_up(client: Peer) -> None:
    """A connection that was skipped is writable again: tell it how many batches it missed."""
    client.send(protocol.dropped_frame(client.dropped))
    client.dropped = 0
