"""The fan-out writes one prebuilt WebSocket frame to every plain connection, and lets
websockets frame it for connections with an extension (permessage-deflate): real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve

from server.config import Config
from server.deadline import within
from server.delivery.fanout import RoomFanout
from server.edge.client import WsWriter


class _Peer:
    """The fan-out's view of a connection (server.delivery.peer.Peer), over a real socket."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.sink = ws  # what the edge's WsWriter writes to
        self.dropped = 0
        self.closed_with: int | None = None

    @property
    def closing(self) -> bool:
        return self.closed_with is not None

    def send(self, frame: bytes) -> None:
        broadcast((self.ws,), frame)

    def close(self, code: int, reason: str) -> None:
        self.closed_with = code


@asynccontextmanager
async def _server(
    compression: str | None, clients: int
) -> AsyncIterator[tuple[list[_Peer], list[ClientConnection]]]:
    peers: list[_Peer] = []
    opened = asyncio.Event()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        peers.append(_Peer(ws))
        if len(peers) == clients:
            opened.set()
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
        port = server.sockets[0].getsockname()[1]
        conns = [await connect(f"ws://127.0.0.1:{port}", compression=compression) for _ in range(clients)]
        await within(opened.wait(), 10)
        try:
            yield peers, conns
        finally:
            done.set()
            for conn in conns:
                await conn.close()


async def test_every_viewer_gets_the_same_frame_with_and_without_deflate() -> None:
    fanout = RoomFanout(Config(port=0, http_port=0), WsWriter())
    frames = [
        msgpack.packb({"t": "batch", "room": "r", "events": [{"seq": i, "text": "x" * 300 * i}]})
        for i in (1, 2, 400)
    ]
    for compression in (None, "deflate"):
        async with _server(compression, 3) as (peers, conns):
            assert all(bool(p.ws.protocol.extensions) == (compression is not None) for p in peers)
            for frame in frames:  # small, 2-byte and 8-byte length headers
                fanout.write(peers, frame)
            for conn in conns:
                got = [await within(conn.recv(), 10) for _ in frames]
                assert got == frames


async def test_a_closing_connection_gets_nothing_more() -> None:
    fanout = RoomFanout(Config(port=0, http_port=0), WsWriter())
    async with _server(None, 2) as (peers, conns):
        peers[0].closed_with = 1012
        fanout.write(peers, b"one")
        peers[0].closed_with = None
        fanout.write(peers, b"two")
        assert await within(conns[1].recv(), 10) == b"one"
        assert await within(conns[0].recv(), 10) == b"two"  # "one" skipped it
