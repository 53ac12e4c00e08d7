"""Keyframe detection on encoded bitstreams, and coalescing of upstream keyframe requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

_H264_KEY_NAL_TYPES = frozenset({5, 7})  # IDR slice, SPS


def h264_nal_types(data: bytes) -> list[int]:
    """NAL unit types in an Annex B buffer (aiortc's depayloader emits Annex B)."""
    types: list[int] = []
    i = data.find(b"\x00\x00\x01")
    while i != -1 and i + 3 < len(data):
        types.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return types


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether a viewer's decoder can start at this frame.

    VP8: bit 0 of the frame tag is 0 for key frames. H.264: an IDR slice or SPS is
    present. Audio codecs have no inter-frame dependency, so every frame qualifies.
    """
    name = codec_name.lower()
    if name == "vp8":
        return len(data) > 0 and data[0] & 1 == 0
    if name == "h264":
        return any(t in _H264_KEY_NAL_TYPES for t in h264_nal_types(data))
    return True


class KeyframeRequester:
    """Sends keyframe requests upstream, at most one per ``interval`` seconds.

    Every viewer that subscribes, overflows or reports loss asks for a keyframe; with many
    viewers that would make the publisher send keyframes back to back. A request that
    arrives within ``interval`` of the last one sent is deferred to the end of the
    interval (and merged with any others), never dropped, so a late viewer still gets its
    keyframe.
    """

    def __init__(
        self,
        send: Callable[[], Awaitable[None]],
        interval: float = 0.1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.interval = interval
        self.requests = 0  # asked for, by viewers or the SFU
        self.sent = 0  # actually sent upstream
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._last_sent: float | None = None
        self._deferred: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def coalesced(self) -> int:
        return self.requests - self.sent - (1 if self._deferred is not None else 0)

    def request(self) -> None:
        """Ask for a keyframe; returns at once, sending now or at the end of the interval."""
        if self._closed:
            return
        self.requests += 1
        if self._deferred is not None:
            return
        now = self._clock()
        wait = 0.0 if self._last_sent is None else self._last_sent + self.interval - now
        if wait <= 0:
            self._fire()
        else:
            self._idle.clear()
            self._deferred = self._loop.call_later(wait, self._fire)

    async def flush(self) -> None:
        """Wait until every request made so far has been sent (or the requester closed)."""
        await self._idle.wait()

    def close(self) -> None:
        """Stop sending; pending requests are discarded."""
        self._closed = True
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        for task in self._tasks:
            task.cancel()
        self._idle.set()

    def _fire(self) -> None:
        self._deferred = None
        if self._closed:
            return
        self._last_sent = self._clock()
        self.sent += 1
        self._idle.clear()
        task = self._loop.create_task(self._run_send())
        self._tasks.add(task)
        task.add_done_callback(self._send_done)

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self._deferred is None:
            self._idle.set()

    async def _run_send(self) -> None:
        try:
            await self._send()
        except Exception:
            logger.exception("media: sending a keyframe request failed")
