"""A Redis connection of our own: RESP3, parsed by hiredis as the bytes arrive.

The broker keeps two per primary, for what redis-py does slowly or not at all:

- **pub/sub.** With redis-py every message costs an awaited `get_message` in a reader task,
  and a subscribed RESP2 connection runs nothing but (un)subscribes. Here messages are
  dispatched straight from `data_received`, and RESP3 lets the connection run ordinary commands
  too, in order with its subscriptions: `SUBSCRIBE ch` then `XRANGE dms` in one write reads
  exactly what the subscription will not deliver, in one round trip (a user's DM backlog at
  join).
- **pipelines.** A tick's publishes (hundreds of script calls) are packed by hiredis in C and
  written at once; each reply resolves its future. redis-py's asyncio pipeline packs every
  argument in Python and wraps every read in a timeout, which cost a node a quarter of its CPU
  with thousands of active rooms.

In RESP3, (un)subscribe confirmations and messages are push replies (hiredis hands them over
as `PushNotification`); every other reply answers the oldest command still waiting, in order.
Nothing that blocks (WAIT, BLPOP) belongs on these connections: every command behind it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.exceptions import NoScriptError, ResponseError

PushHandler = Callable[[bytes, bytes, Any], None]  # (kind, channel, payload or count)
_PUSH = hiredis.PushNotification


class Resp3Connection(asyncio.Protocol):
    def __init__(self, on_push: PushHandler, on_lost: Callable[[BaseException], None]) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._on_push = on_push
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self._subscribing = False  # has sent (un)subscribes: see data_received

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not asyncio's class
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a peer that vanished without a FIN is found by keepalive
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if type(reply) is _PUSH:
                if len(reply) >= 2:
                    self._on_push(reply[0], reply[1], reply[2] if len(reply) > 2 else None)
            elif self._subscribing and isinstance(reply, ResponseError):
                # an error can answer a (un)subscribe as well as a command: which one cannot be
                # told, and a reply given to the wrong command would hand one user's data to
                # another. Start over (a moved slot, mostly: the session re-reads the topology).
                self._fail(ConnectionError(f"redis refused a command on a pub/sub connection: {reply}"))
                return
            elif self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    if isinstance(reply, ResponseError):
                        text = str(reply)
                        fut.set_exception(NoScriptError(text) if text.startswith("NOSCRIPT") else reply)
                    else:
                        fut.set_result(reply)
            else:  # an answer to nothing asked: the stream is out of step, start over
                self._fail(ConnectionError(f"unexpected reply on a redis connection: {reply!r:.80}"))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("redis closed the connection"))

    # -- use -------------------------------------------------------------------------------

    def send(
        self, pushes: Sequence[Sequence[Any]], commands: Sequence[Sequence[Any]] = ()
    ) -> list[asyncio.Future[Any]]:
        """Write (un)subscribes (answered by push replies), then commands, in one write; each
        command's reply (or error) comes back in its future, in order."""
        if self.closed or self._transport is None:
            raise ConnectionError("redis connection is closed")
        pack = hiredis.pack_command
        if pushes:
            self._subscribing = True
        packed = [pack(tuple(args)) for args in pushes]
        packed += [pack(tuple(args)) for args in commands]
        futures: list[asyncio.Future[Any]] = []
        if commands:
            create = asyncio.get_running_loop().create_future
            futures = [create() for _ in commands]
            self._waiting.extend(futures)
        self._transport.write(b"".join(packed))
        return futures

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        self._fail_waiting(ConnectionError("redis connection closed"))

    def _fail(self, exc: BaseException) -> None:
        self._fail_waiting(exc)
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
            self._on_lost(exc)

    def _fail_waiting(self, exc: BaseException) -> None:
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)


async def open_resp3(
    host: str,
    port: int,
    *,
    username: str | None,
    password: str | None,
    db: int,
    timeout: float,
    on_push: PushHandler,
    on_lost: Callable[[BaseException], None],
) -> Resp3Connection:
    """Connect, switch to RESP3 (authenticating when the URL has a password), select the db."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can drop a cancel
        _, conn = await loop.create_connection(lambda: Resp3Connection(on_push, on_lost), host, port)
    try:
        hello: list[Any] = ["HELLO", 3]
        if password:
            hello += ["AUTH", username or "default", password]
        replies = conn.send((), [hello, *([("SELECT", db)] if db else [])])
        async with asyncio.timeout(timeout):
            await asyncio.gather(*replies)
    except BaseException:
        conn.close()
        raise
    return conn
