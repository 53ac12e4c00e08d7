"""One WebSocket connection's I/O: feed its frames to the state machine, perform what it returns.

The rules (join, resume, strikes, dispatch) live in `server.edge.connection`, with no I/O;
this module reads the socket, writes frames, closes, pauses, and calls the handler the
state machine routes each message to (from the table built in app.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from server import logs, metrics
from server.broker.redis_link import DOWN as BROKER_DOWN
from server.broker.redis_sturdy import closed_under_us
from server.deadline import within
from server.edge.connection import (
    Admit,
    AwaitJoin,
    Close,
    Connection,
    DevTokens,
    Dispatch,
    Enter,
    Handler,
    Handlers,
    Hangup,
    Output,
    Pause,
    Refused,
    Send,
    SendLater,
)
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.connstate import ConnState
    from server.abuse.guard import Guard
    from server.config import Config
    from server.delivery.peer import Peer
    from server.node.node import Node

log = logging.getLogger("liveroom.client")
_broker_down_log = logs.RefusalLog(log)  # one WARNING per 10 s however many frames hit it
MAX_DMS_IN_FLIGHT = 16  # per connection; past it the read loop waits for one to finish
OPEN = State.OPEN


@dataclass(frozen=True, slots=True)
class Services:
    """What a connection needs besides its socket; one instance shared by every connection."""

    config: Config
    node: Node  # join and leave
    guard: Guard  # admission, the connection's checks, disconnect
    handlers: Handlers  # message type -> handler (app.py)


class Client:
    """A connected, not yet or already joined, client (a `server.delivery.peer.Peer`)."""

    __slots__ = (
        "_closing",
        "_dm_tails",
        "_pause_owed",
        "abuse",
        "conn",
        "dropped",
        "identity",
        "opened",
        "remote_ip",
        "room_id",
        "services",
        "sink",
        "ws",
    )

    def __init__(self, services: Services, ws: ServerConnection) -> None:
        self.ws = ws
        self.sink = ws  # what WsWriter writes the room fan-out to
        address = ws.remote_address
        self.remote_ip = str(address[0]) if address else "?"
        self.services = services
        self.identity: auth.Identity | None = None
        self.room_id: str | None = None
        self.dropped = 0  # consecutive batches skipped because the socket was full
        self._closing: asyncio.Task[None] | None = None
        self.opened = time.perf_counter()
        self.abuse: ConnState | None = None  # set by guard.connect
        self._dm_tails: dict[str, asyncio.Task[None]] = {}  # recipient -> its newest DM in flight
        self._pause_owed = 0.0  # a penalty a DM task earned: the read loop serves it
        self.conn = Connection(
            self,
            services.guard,
            services.handlers,
            services.config.join_timeout,
            _dev_tokens(services.config),
        )

    # -- writing -------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a frame without waiting (same path as the room fan-out)."""
        broadcast((self.ws,), frame)

    def buffered(self) -> int:
        transport = self.ws.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def reject(self, error: ProtocolError) -> None:
        """Refuse something from outside the read loop too (a kick from another node)."""
        self._perform(self.conn.reject(error))

    @property
    def closing(self) -> bool:
        """close() was called: nothing more is fanned out to it (the close frame is queued next)."""
        return self._closing is not None

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.ws.close(code, reason[:100]))

    async def close_and_wait(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason[:100])

    def abort(self) -> None:
        if self.ws.transport is not None:
            self.ws.transport.abort()

    def _perform(self, outputs: list[Output]) -> Any:
        """Write and close as told; return the one request (or pause) left for the caller."""
        request = None
        for out in outputs:
            kind = type(out)
            if kind is Send:
                self.send(out.frame)  # type: ignore[union-attr]
            elif kind is SendLater:
                asyncio.get_running_loop().call_later(out.delay, self.send, out.frame)  # type: ignore[union-attr]
            elif kind is Close:
                self.close(out.code, out.reason)  # type: ignore[union-attr]
            elif kind is Refused:
                error = out.error  # type: ignore[union-attr]
                level = logging.INFO if error.fatal else logging.DEBUG
                logs.connection_event(
                    "refused",
                    self.ws,
                    level,
                    code=int(error.code),
                    error=error.code.name.lower(),
                    reason=error.message,
                    room=self.room_id,
                )
            else:
                request = out
        return request

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
            if self._dm_tails:  # DMs in flight finish (each is bounded): their claims are answered
                await asyncio.gather(*self._dm_tails.values(), return_exceptions=True)
            if self._closing is not None:  # returning first would close with 1000 instead
                await self._closing
            metrics.connections.dec()
            logs.connection_event("close", self.ws, logging.DEBUG, code=self.ws.close_code, room=self.room_id)
            self.services.guard.disconnect(self)
            if self.identity is not None and self.room_id is not None:
                await self.services.node.leave(self)

    async def _join(self) -> bool:
        conn = self.conn
        request = self._perform(conn.open(self.ws.request.path if self.ws.request else ""))
        while request is not None:
            if type(request) is AwaitJoin:
                try:
                    first = await within(self.ws.recv(), request.timeout)
                except TimeoutError:
                    request = self._perform(conn.timed_out())
                else:
                    request = self._perform(conn.receive(first))
            elif type(request) is Admit:
                try:
                    who = await self.services.guard.admit(self, request.token, request.room)
                except ProtocolError as error:
                    request = self._perform(conn.refused(error))
                else:
                    request = self._perform(conn.admitted(who))
            elif type(request) is Enter:
                await self.services.node.join(self, request.resume)
                subscribe = self._perform(conn.entered())
                who = self.identity
                assert who is not None
                logs.connection_event(
                    "join", self.ws, logging.DEBUG, room=self.room_id, uid=who.uid, role=who.role
                )
                metrics.join_latency.observe(time.perf_counter() - self.opened)
                if type(subscribe) is Dispatch:  # media with the join: the offer follows the snapshot
                    try:
                        await self._dispatch(subscribe.handler, subscribe.message)
                    except ProtocolError as error:
                        self._perform(conn.failed(error))
                return True
            else:
                raise AssertionError(f"unexpected request while joining: {request!r}")
        return False

    async def _serve(self) -> None:
        conn = self.conn
        async for data in self.ws:
            if self._pause_owed and self.ws.state is State.OPEN:
                pause, self._pause_owed = self._pause_owed, 0.0
                await asyncio.sleep(pause)
            request = self._perform(conn.receive(data))
            if request is None:
                continue
            kind = type(request)
            if kind is Dispatch and type(request.message) is protocol.DirectMessage:
                await self._send_dm(request.handler, request.message)
                continue
            if kind is Dispatch:
                try:
                    await self._dispatch(request.handler, request.message)
                except ProtocolError as error:
                    request = self._perform(conn.failed(error))
                except BROKER_DOWN as exc:
                    self._unavailable(exc, request.message)
                    request = None
                except Exception as exc:  # a bug must cost one message, never the room
                    if closed_under_us(exc):
                        self._unavailable(exc, request.message)
                        continue
                    log.exception(
                        "error handling a frame", extra={"fields": {"request_id": logs.request_id(self.ws)}}
                    )
                    request = self._perform(conn.crashed())
                if request is None:
                    continue
                kind = type(request)
            if kind is Pause:
                if self.ws.state is State.OPEN:  # pushing back on a closed socket only delays its end
                    await asyncio.sleep(request.seconds)
            elif kind is Hangup:
                await self.ws.close(1000, "bye")
                return

    async def _send_dm(self, handler: Handler, message: Any) -> None:
        """A DM runs beside the read loop: one waiting on Redis (a replica's WAIT, a failover)
        must not hold up the sender's other frames; its answer carries `cid`/`id`, so it may
        come after later ones. DMs to one recipient keep their order (each waits for the one
        before); at most MAX_DMS_IN_FLIGHT at once, then reading waits (TCP pushes back)."""
        while len(self._dm_tails) >= MAX_DMS_IN_FLIGHT:
            await asyncio.wait(list(self._dm_tails.values()), return_when=asyncio.FIRST_COMPLETED)
        before = self._dm_tails.get(message.to)
        task = asyncio.get_running_loop().create_task(self._dm(handler, message, before))
        self._dm_tails[message.to] = task
        task.add_done_callback(lambda done: self._dm_done(message.to, done))

    def _dm_done(self, to: str, task: asyncio.Task[None]) -> None:
        if self._dm_tails.get(to) is task:
            del self._dm_tails[to]

    async def _dm(self, handler: Handler, message: Any, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        try:
            await handler.call(self, message)  # type: ignore[misc]
        except ProtocolError as error:
            pause = self._perform(self.conn.failed(error))
            if type(pause) is Pause:  # stop reading a flooder: the read loop sleeps it
                self._pause_owed = max(self._pause_owed, pause.seconds)
        except BROKER_DOWN as exc:
            self._unavailable(exc, message)
        except Exception as exc:  # a bug must cost one message, never the connection
            if closed_under_us(exc):
                self._unavailable(exc, message)
                return
            log.exception("error handling a DM", extra={"fields": {"request_id": logs.request_id(self.ws)}})
            self._perform(self.conn.crashed())

    def _unavailable(self, exc: BaseException, message: Any) -> None:
        """A Redis error a handler did not turn into an answer itself (any class: connection,
        cluster, timeout): 4501 with retry_after (no strike: the client did nothing wrong), and
        one rate-limited WARNING line, never a traceback."""
        _broker_down_log.refused(f"redis error ({type(exc).__name__}: {exc})", time.monotonic())
        metrics.rejections.labels(reason="broker_unavailable").inc()
        ref = getattr(message, "cid", None)
        text = "the shared store is unavailable: retry"
        self.send(protocol.error_frame(ErrorCode.BROKER_UNAVAILABLE, text, ref, retry_after=1.0))

    async def _dispatch(self, handler: Handler, message: Any) -> None:
        if handler.awaits:
            await handler.call(self, message)  # type: ignore[misc]
        else:
            handler.call(self, message)


class WsWriter:
    """The room fan-out's writes (server.delivery.fanout.Writer) on WebSockets.

    A server's frames are not masked, so a room's frame is framed once and the same bytes are
    written to every plain connection's transport (one transport.write each, as close to a
    raw socket write as Python gets); a connection with an extension (permessage-deflate
    compresses per connection) or a write of its own queued in websockets' protocol goes
    through websockets.broadcast, which frames it itself. One loop per room frame: the hot path."""

    def write(
        self,
        clients: Iterable[Peer],
        frame: bytes,
        own: Mapping[Peer, bytes] | None,
        limit: int,
        caught_up: Callable[[Peer], None],
    ) -> tuple[list[Peer], int]:
        wire: bytes | None = None  # the frame with its WebSocket header, built at the first use
        others = []  # connections websockets frames itself (extensions, its own writes pending)
        full: list[Peer] = []
        written = 0
        for client in clients:
            if client.closing:  # e.g. reset with its room's stream: no batch of the next one
                continue
            ws = client.sink
            transport = ws.transport
            if transport is None:
                continue
            if transport.get_write_buffer_size() > limit:
                full.append(client)
                continue
            state = ws.protocol
            if state.state is not OPEN or ws.send_in_progress is not None:
                continue  # closing, or a fragmented send: what websockets.broadcast skips too
            if client.dropped:
                caught_up(client)
            if own and client in own:
                broadcast((ws,), own[client])
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
            broadcast(others, frame)
        return full, written + len(others)


def framed(payload: bytes) -> bytes:
    """A binary WebSocket frame as a server sends it (unmasked, no extension): header + payload."""
    return Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])


def _dev_tokens(config: Config) -> DevTokens | None:
    """The dev join's token minter (viewer role only), when dev tokens are on."""
    if not config.dev_tokens_enabled:
        return None
    return lambda room, user, name: auth.mint(config.secret, room=room, user=user, name=name, role="viewer")
