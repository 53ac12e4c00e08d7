"""One WebSocket connection: authenticate, join, then read frames and hand them to the node.

This is the I/O edge for a client. It decodes with `server.protocol`, asks the
node to act, and turns every ProtocolError into an error frame (closing the
connection only for the codes that cannot continue).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from server import auth, logs, metrics, protocol
from server.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import ConnState
    from server.node import Node

log = logging.getLogger("liveroom.client")


class Client:
    """A connected, not yet or already joined, client."""

    __slots__ = ("_closing", "abuse", "dropped", "identity", "node", "opened", "room_id", "ws")

    def __init__(self, node: Node, ws: ServerConnection) -> None:
        self.ws = ws
        self.node = node
        self.identity: auth.Identity | None = None
        self.room_id: str | None = None
        self.dropped = 0  # consecutive batches skipped because the socket was full
        self._closing: asyncio.Task[None] | None = None
        self.opened = time.perf_counter()
        self.abuse: ConnState | None = None  # set by node.guard.connect

    # -- writing -------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a frame without waiting (same path as the room fan-out)."""
        websockets.broadcast((self.ws,), frame)

    def buffered(self) -> int:
        transport = self.ws.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def reject(self, error: ProtocolError) -> None:
        metrics.rejections.labels(reason=error.code.name.lower()).inc()
        logs.connection_event(
            "refused", self.ws, logging.INFO if error.fatal else logging.DEBUG, code=int(error.code)
        )
        if self.node.guard.on_reject(self, error):  # not to clients that do not read them
            self.send(protocol.error_frame(error.code, error.message, error.ref, error.retry_after))
        if error.fatal:
            self.close(int(error.code), error.message)

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.ws.close(code, reason[:100]))

    # -- reading ---------------------------------------------------------------

    async def run(self) -> None:
        metrics.connections.inc()
        try:
            joined = await self._join()
            if joined:
                await self._serve()
        except ConnectionClosed:
            pass
        finally:
            if self._closing is not None:  # returning first would close with 1000 instead
                await self._closing
            metrics.connections.dec()
            logs.connection_event("close", self.ws, logging.DEBUG, code=self.ws.close_code, room=self.room_id)
            self.node.guard.disconnect(self)
            if self.identity is not None and self.room_id is not None:
                await self.node.leave(self)

    async def _join(self) -> bool:
        query = parse_qs(urlsplit(self.ws.request.path if self.ws.request else "").query)
        token = query.get("token", [None])[0]
        room = query.get("room", [None])[0]
        resume: tuple[str, int] | None = None
        try:
            self.node.guard.connect(self)  # per-IP connection cap, before anything else
            if token is None:
                try:
                    first = await asyncio.wait_for(self.ws.recv(), self.node.config.join_timeout)
                except TimeoutError:
                    raise ProtocolError(ErrorCode.AUTH_TIMEOUT, "no join frame in time") from None
                message = protocol.parse_client_message(first)
                if not isinstance(message, protocol.Join):
                    raise ProtocolError(ErrorCode.AUTH_REQUIRED, "the first frame must be a join")
                token, room = message.token, message.room or room
                if message.resume_epoch is not None and message.resume_seq is not None:
                    resume = (message.resume_epoch, message.resume_seq)
            elif room is not None and not protocol.valid_id(room):
                raise ProtocolError(ErrorCode.BAD_FIELD, "'room' is not a valid room id")
            self.identity = await self.node.guard.admit(self, token, room)
        except ProtocolError as error:
            self.reject(error)
            self.close(int(error.code), error.message)  # no room to stay in without a join
            return False
        self.room_id = self.identity.room
        await self.node.join(self, resume)
        self.node.guard.joined(self)
        metrics.joins.inc()
        logs.connection_event(
            "join", self.ws, logging.DEBUG, room=self.room_id, uid=self.identity.uid, role=self.identity.role
        )
        metrics.join_latency.observe(time.perf_counter() - self.opened)
        return True

    async def _serve(self) -> None:
        node = self.node
        async for data in self.ws:
            try:
                node.guard.frame(self)  # rate of frames, before decoding
                message = node.guard.check(self, protocol.parse_client_message(data))
                if message is None:  # handled by the guard (shadow-dropped)
                    continue
                _COUNTED[type(message)].inc()
                if isinstance(message, protocol.Danmaku):
                    node.danmaku(self, message)
                elif isinstance(message, protocol.Like):
                    node.like(self, message)
                elif isinstance(message, protocol.DirectMessage):
                    await node.direct_message(self, message)
                elif isinstance(message, protocol.DmSeen):
                    await node.dm_seen(self, message)
                elif isinstance(message, (protocol.Mod, protocol.Block)):
                    await node.guard.command(self, message)
                elif isinstance(message, protocol.Stats):
                    node.analytics.first_frame(self, message.first_frame_ms)
                elif isinstance(message, protocol.Ping):
                    self.send(protocol.pong_frame(message.ts))
                elif isinstance(message, protocol.ANSWER_MESSAGES):
                    await node.answers.handle(self, message)
                elif isinstance(message, protocol.MEDIA_MESSAGES):
                    await node.media.handle(self, message)
                elif isinstance(message, protocol.Leave):
                    await self.ws.close(1000, "bye")
                    return
                else:  # a second join
                    raise ProtocolError(ErrorCode.ALREADY_JOINED, "already joined; open a new connection")
            except ProtocolError as error:
                self.reject(error)
                if pause := node.guard.penalty(error):  # stop reading a flooder: TCP pushes back
                    await asyncio.sleep(pause)
            except Exception:  # a bug must cost one message, never the room
                log.exception(
                    "error handling a frame", extra={"fields": {"request_id": logs.request_id(self.ws)}}
                )
                self.reject(ProtocolError(ErrorCode.INTERNAL, "internal error"))


_TYPE_NAMES: dict[type, str] = {
    protocol.Join: "join",
    protocol.Leave: "leave",
    protocol.Danmaku: "danmaku",
    protocol.Like: "like",
    protocol.DirectMessage: "dm",
    protocol.DmSeen: "dm_seen",
    protocol.Ping: "ping",
    protocol.Stats: "stats",
    protocol.Mod: "mod",
    protocol.Block: "block",
    **{cls: cls.__name__.lower() for cls in protocol.MEDIA_MESSAGES},
    protocol.Reply: "reply",
    protocol.Question: "question",
    protocol.Pin: "pin",
    protocol.Unpin: "unpin",
    protocol.ProductEdit: "product",
}
# label lookups cost a lock and a dict per call: bind each type's counter once
_COUNTED = {cls: metrics.messages_in.labels(type=name) for cls, name in _TYPE_NAMES.items()}
