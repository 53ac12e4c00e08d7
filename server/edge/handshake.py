"""The WebSocket port's connections: bytes after the request head wait for the handshake's answer.

websockets (17.4) parses whatever follows the request head as WebSocket frames while the
handshake is still CONNECTING. A trailing CRLF, a pipelined second request or any stray bytes
then fail the frame parser, which half-closes the connection; the handshake's answer that
follows trips `assert not self.eof_sent` and websockets logs "unexpected internal error" with a
traceback, and the client gets no answer at all (issue #24: the HTTP fuzz's ERROR lines).
Holding those bytes until the answer is written fixes both: a plain HTTP request is answered
(the bytes are dropped: one request per connection), and a WebSocket client that sent its
first frames without waiting for the 101 still has them read once the connection is open.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import CONNECTING, OPEN

HEAD_END = b"\r\n\r\n"  # websockets reads only CRLF-terminated lines
HOLD_MAX = 1 << 20  # bytes held before the answer, at most: past it the connection is dropped


class HeadFirstConnection(ServerConnection):
    """A ServerConnection that feeds websockets the request head alone until it answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tail = b""  # the last bytes of the head so far (HEAD_END may straddle reads)
        self._held: bytearray | None = None  # after the head, until the handshake answered

    def data_received(self, data: bytes) -> None:
        if self._held is not None:
            self._held += data
            if len(self._held) > HOLD_MAX:
                self._held = bytearray()
                self.transport.abort()
            return
        if self.protocol.state is not CONNECTING:
            super().data_received(data)
            return
        seen = self._tail + data
        end = seen.find(HEAD_END)
        if end < 0:
            self._tail = seen[-(len(HEAD_END) - 1) :]
            super().data_received(data)
            return
        cut = end + len(HEAD_END) - len(self._tail)  # the head's end within `data`
        self._held = bytearray(data[cut:])
        super().data_received(data[:cut])

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        finally:
            held, self._held = self._held, None
            if held and self.protocol.state is OPEN:  # a client that did not wait for the 101
                super().data_received(bytes(held))
