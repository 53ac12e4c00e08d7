"""A minimal RFC 6455 client on a bare asyncio Protocol, for the load generator only.

Why not the `websockets` client: at 500,000 delivered events/s the generator has
to take in ~40,000 frames/s while sharing two cores with the server, and the
library's per-frame machinery (frame objects, a queue, a coroutine per recv)
would make the generator, not the server, the thing being measured. Here a
frame costs a header parse and, for viewers that only count, one C-level
`bytearray.count` over the payload. Sampled viewers decode every frame with
msgpack to measure latency. Server frames are unmasked, unfragmented and
uncompressed (the server sets compression=None); anything else is an error.
Only ever pointed at 127.0.0.1 by the bench.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any, cast

import msgpack

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension on CPython

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        """Pure-Python fallback for the XOR mask client frames must carry."""
        return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Each event map starts with key "t"; "\xa1t" then the fixstr type name. Counting
# these byte patterns counts events without decoding (user text never holds them).
DANMAKU_PATTERN = b"\xa1t\xa7danmaku"
DROPPED_PATTERN = b"\xa1t\xa7dropped"
SNAPSHOT_PATTERN = b"\xa1t\xa8snapshot"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class Refused(ConnectionError):
    """The server answered the join with an error frame (e.g. 4206 busy, with retry_after)."""

    def __init__(self, why: str, code: int | None, retry_after: float | None) -> None:
        super().__init__(why)
        self.code = code
        self.retry_after = retry_after


class RawWs(asyncio.Protocol):
    """One client connection; subclasses or callbacks decide what a message means.

    `joined` resolves with the perf_counter time the first frame (the snapshot)
    arrived. After that each binary frame goes to `on_message(buf, start, end)`
    with the payload still inside the receive buffer, so counting needs no copy.
    """

    def __init__(
        self,
        path: str,
        host: str,
        on_message: Callable[[bytearray, int, int], None],
        hello: dict[str, Any] | None = None,
        on_joined: Callable[[bytes], None] | None = None,
    ) -> None:
        self.path = path
        self.host = host
        self.on_message = on_message
        # `hello`: a frame sent as soon as the handshake is accepted (a `join` with `resume`);
        # `on_joined`: given the snapshot's bytes before any later frame reaches on_message
        self.hello = hello
        self.on_joined = on_joined
        self.transport: asyncio.Transport | None = None
        self.joined: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._open = False
        self._key = base64.b64encode(os.urandom(16))
        self._mask = os.urandom(4)
        self.error: str | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._check_handshake(bytes(buf[:end])):
                self._fail(f"handshake refused: {bytes(buf[:end])[:200]!r}")
                return
            del buf[: end + 4]
            self._open = True
            if self.hello is not None:
                self.send(self.hello)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, length = buf[pos], buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == OP_BINARY and b0 & 0x80:
                if not self.joined.done():
                    if buf.find(SNAPSHOT_PATTERN, start, end) >= 0:
                        self.joined.set_result(time.perf_counter())
                        if self.on_joined is not None:
                            self.on_joined(bytes(buf[start:end]))
                    else:
                        self._refused(bytes(buf[start:end]))
                else:
                    self.on_message(buf, start, end)
            elif opcode == OP_PING:
                self._send_frame(OP_PONG, bytes(buf[start:end]))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(buf[start : start + 2], "big") if length >= 2 else 1005
                self._fail(f"closed by server: {code} {bytes(buf[start + 2 : end])!r}", code)
                return
            elif opcode != OP_PONG:
                self._fail(f"unexpected frame opcode {opcode} fin {b0 >> 7}")
                return
            pos = end
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}" if exc else "connection lost", 1006)

    # -- helpers -------------------------------------------------------------------------

    def _check_handshake(self, head: bytes) -> bool:
        status, _, rest = head.partition(b"\r\n")
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())
        return b" 101 " in status + b" " and accept in rest

    def _refused(self, frame: bytes) -> None:
        why = f"first frame is not a snapshot: {frame[:200]!r}"
        try:
            error = msgpack.unpackb(frame)
        except Exception:
            error = None
        if isinstance(error, dict) and error.get("t") == "error" and not self.joined.done():
            self.joined.set_exception(Refused(why, error.get("code"), error.get("retry_after")))
            self.joined.exception()
        self._fail(why)

    def _fail(self, why: str, code: int = 1006) -> None:
        if self.error is None:
            self.error = why
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(why))
            self.joined.exception()  # mark retrieved: callers may have given up already
        if not self.closed.done():
            self.closed.set_result(code)
        if self.transport is not None:
            self.transport.close()

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        transport.write(head + self._mask + apply_mask(payload, self._mask))

    # -- API ---------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Send one msgpack map as a binary frame (no-op once the connection is gone)."""
        self._send_frame(OP_BINARY, msgpack.packb(message))

    @property
    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.error is None

    def close(self) -> None:
        """Send a close frame and drop the connection; the server sees a normal leave."""
        self._send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.close()


async def connect(
    host: str, port: int, path: str, on_message: Callable[[bytearray, int, int], None], timeout: float
) -> tuple[RawWs, float]:
    """Open a connection and wait for the snapshot; returns (conn, seconds to snapshot)."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    proto = RawWs(path, f"{host}:{port}", on_message)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: proto, host, port)
            joined_at = await proto.joined
    except BaseException:
        if proto.transport is not None:
            proto.transport.close()
        raise
    return proto, joined_at - started
