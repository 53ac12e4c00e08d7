"""Fan-out: write one encoded frame to every local connection of a room.

The frame is encoded once per room per tick (the broker's batch); slow sockets are skipped
rather than buffered without bound, told how many batches they missed once they catch up,
and closed (4408) after too many in a row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import websockets

from server import metrics
from server.wire import protocol
from server.wire.protocol import ErrorCode

if TYPE_CHECKING:
    from server.config import Config
    from server.delivery.peer import Peer


class RoomFanout:
    def __init__(self, config: Config) -> None:
        self.config = config  # write_buffer_limit, max_dropped_batches (read per write: tunable live)

    def write(self, clients: Iterable[Peer], frame: bytes) -> None:
        """Write one encoded frame to many sockets, skipping those that cannot keep up."""
        limit = self.config.write_buffer_limit
        max_dropped = self.config.max_dropped_batches
        ready = []
        for client in clients:
            if client.closing:  # e.g. reset with its room's stream: no batch of the next one
                continue
            if client.buffered() > limit:
                client.dropped += 1
                metrics.dropped_batches.inc()
                if client.dropped == max_dropped:
                    metrics.slow_consumer_closes.inc()
                    client.close(int(ErrorCode.SLOW_CONSUMER), "too slow: reconnect")
                continue
            if client.dropped:
                client.send(protocol.dropped_frame(client.dropped))
                client.dropped = 0
            ready.append(client.ws)
        websockets.broadcast(ready, frame)
        metrics.hot.fanout_writes += len(ready)
