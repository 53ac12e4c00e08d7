"""Fan-out of one published track's encoded frames to per-viewer tracks.

Each viewer gets its own :class:`ForwardedTrack` with a small bounded queue, so a slow
viewer only hurts itself: on overflow its queue is flushed and it waits for the next
keyframe (video) or loses the oldest frames (audio). Nothing here decodes or encodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .forward import EncodedFrame
from .gop_cache import GopCache
from .keyframes import is_keyframe

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TrackStats:
    """Per-viewer counters for one forwarded track."""

    frames_forwarded: int = 0  # handed to the viewer's sender
    bytes_forwarded: int = 0
    dropped_waiting_keyframe: int = 0  # frames a viewer could not decode yet
    dropped_overflow: int = 0
    overflows: int = 0
    keyframe_requests: int = 0  # viewer PLI/FIR + requests made by the gate

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ForwardedTrack(MediaStreamTrack):
    """A viewer-side track whose ``recv()`` returns encoded ``av.Packet`` frames.

    Because it yields packets, aiortc's ``RTCRtpSender`` packs them into RTP with the
    negotiated codec instead of encoding; the codec must match the publisher's.
    """

    def __init__(
        self,
        kind: str,
        *,
        max_frames: int,
        request_keyframe: Callable[[], None],
        keyframe_retry: float = 1.0,
        on_stop: Callable[[ForwardedTrack], None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.stats = TrackStats()
        self.max_frames = max(1, max_frames)
        self.keyframe_retry = keyframe_retry
        self._gated = kind == "video"
        self._waiting_keyframe = self._gated
        self._queue: deque[tuple[av.Packet, float]] = deque()  # (frame, when it came in)
        self._wakeup = asyncio.Event()
        self._publisher_ended = False
        self._request_upstream = request_keyframe
        self._last_request: float | None = None
        self._on_stop = on_stop
        self._loop = asyncio.get_running_loop()
        self._started = False

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._waiting_keyframe

    @property
    def queued(self) -> int:
        return len(self._queue)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe on this viewer's behalf (coalesced upstream)."""
        self.stats.keyframe_requests += 1
        self._last_request = self._loop.time()
        self._request_upstream()

    def deliver(self, frame: EncodedFrame, keyframe: bool) -> int:
        """Queue a frame for this viewer (keyframe gating, queue bound); returns frames dropped."""
        if self.readyState != "live" or self._publisher_ended:
            return 1
        if self._waiting_keyframe:
            if not keyframe:
                self.stats.dropped_waiting_keyframe += 1
                self._retry_keyframe_request()
                return 1
            self._waiting_keyframe = False
        dropped = 0
        if len(self._queue) >= self.max_frames:
            self.stats.overflows += 1
            if self._gated:
                # Frames after a gap are undecodable: flush, then restart at a keyframe.
                dropped = len(self._queue)
                self._queue.clear()
                if not keyframe:
                    dropped += 1
                    self._waiting_keyframe = True
                    if self._started:  # else: asked for when the sender starts pulling
                        self.request_keyframe()
            else:
                self._queue.popleft()
                dropped = 1
            self.stats.dropped_overflow += dropped
            if self._waiting_keyframe:
                return dropped
        self._queue.append((frame.packet, frame.arrived))
        self._wakeup.set()
        return dropped

    def end(self) -> None:
        """The publisher's track ended: make ``recv()`` raise so the sender stops."""
        self._publisher_ended = True
        self._queue.clear()
        self._wakeup.set()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        """Next encoded frame for the viewer's sender; raises ``MediaStreamError`` at the end."""
        return (await self.recv_arrived())[0]

    async def recv_arrived(self) -> tuple[av.Packet, float]:
        """The next frame and when it came in from the publisher (``time.monotonic()``): a
        frame replayed from the GOP cache is as old as that, not as its delivery."""
        if not self._started:
            # The viewer's transport is up now; the subscribe-time keyframe may be gone.
            self._started = True
            if self._waiting_keyframe:
                self._retry_keyframe_request()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._queue:
                packet, arrived = self._queue.popleft()
                self.stats.frames_forwarded += 1
                self.stats.bytes_forwarded += packet.size
                return packet, arrived
            if self._publisher_ended:
                self.stop()
                raise MediaStreamError
            self._wakeup.clear()
            await self._wakeup.wait()

    def stop(self) -> None:
        """Stop forwarding to this viewer (called by the sender or the room)."""
        if self.readyState == "live":
            super().stop()
            self._queue.clear()
            self._wakeup.set()
            if self._on_stop is not None:
                self._on_stop(self)

    def _retry_keyframe_request(self) -> None:
        # The subscribe-time request can be lost (e.g. sent before the publisher's
        # transport was up); keep asking, but rarely, while this viewer is gated. A viewer
        # whose sender is not pulling yet does not ask: it would only overflow again.
        if not self._started:
            return
        now = self._loop.time()
        if self._last_request is None or now - self._last_request >= self.keyframe_retry:
            self.request_keyframe()


@dataclass(slots=True)
class FanoutStats:
    """Per published track counters (what came in from the publisher)."""

    frames_in: int = 0
    bytes_in: int = 0
    keyframes_in: int = 0
    deliveries: int = 0  # frames offered to viewer tracks (frames_in x viewers)
    bytes_delivered: int = 0
    viewer_drops: int = 0  # frames viewers dropped (waiting for a keyframe, overflow)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Fanout:
    """Distributes one publisher track's encoded frames to its viewers' tracks.

    ``gop_cache_frames > 0`` keeps the last keyframe and the frames after it (up to that
    many, and ``gop_cache_bytes``) so a new viewer can start at once instead of waiting for
    a requested keyframe (:mod:`server.media.gop_cache`).
    """

    def __init__(
        self,
        kind: str,
        *,
        request_keyframe: Callable[[], None],
        queue_frames: int = 90,
        keyframe_retry: float = 1.0,
        gop_cache_frames: int = 0,
        gop_cache_bytes: int = 4 << 20,
    ) -> None:
        self.kind = kind
        self.codec_name: str | None = None
        self.stats = FanoutStats()
        self.tracks: set[ForwardedTrack] = set()
        self.queue_frames = queue_frames
        self.keyframe_retry = keyframe_retry
        # replayed into a viewer's queue at once, before its transport is up: leave a third of
        # the queue for the frames that arrive meanwhile (an overflow would wait for a keyframe)
        frames = min(gop_cache_frames, queue_frames * 2 // 3) if kind == "video" else 0
        self.gop: GopCache | None = GopCache(frames, gop_cache_bytes) if frames > 0 else None
        self.ended = asyncio.Event()
        self._request_keyframe = request_keyframe
        self._keyframe_waiters: list[asyncio.Future[None]] = []

    def add_track(self) -> ForwardedTrack:
        """Create a viewer track fed by this fanout; a video one asks for a keyframe."""
        track = ForwardedTrack(
            self.kind,
            max_frames=self.queue_frames,
            request_keyframe=self._request_keyframe,
            keyframe_retry=self.keyframe_retry,
            on_stop=self.tracks.discard,
        )
        if self.ended.is_set():
            track.end()
            return track
        self.tracks.add(track)
        if self.kind == "video":
            if self.gop is not None and self.gop.warm:  # start now, no PLI round trip
                for frame, key in self.gop.replay():
                    track.deliver(frame, key)
            else:
                track.request_keyframe()
        return track

    def on_frame(self, frame: EncodedFrame) -> None:
        """Called by the receiver tap for every reassembled encoded frame."""
        self.codec_name = frame.codec_name
        key = is_keyframe(frame.codec_name, frame.data)
        self.stats.frames_in += 1
        self.stats.bytes_in += len(frame.data)
        if key and self.kind == "video":
            self.stats.keyframes_in += 1
            self._wake_keyframe_waiters(None)
        if self.gop is not None and self.gop.add(frame, key):
            self._request_keyframe()  # the group outgrew the cache: warm it again
        size = len(frame.data)
        for track in list(self.tracks):
            self.stats.deliveries += 1
            self.stats.bytes_delivered += size
            self.stats.viewer_drops += track.deliver(frame, key)

    def end(self) -> None:
        """The publisher's track ended: end every viewer track fed from it."""
        if self.ended.is_set():
            return
        self.ended.set()
        if self.gop is not None:
            self.gop.clear()
        self._wake_keyframe_waiters(MediaStreamError("publisher track ended"))
        for track in list(self.tracks):
            track.end()
        self.tracks.clear()

    def next_keyframe(self) -> asyncio.Future[None]:
        """A future that resolves at the next keyframe (e.g. to announce a stream as live).

        Registered immediately, so no keyframe can slip in between the call and the
        ``await``; it fails with ``MediaStreamError`` if the publisher's track ends first.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.ended.is_set():
            waiter.set_exception(MediaStreamError("publisher track ended"))
        else:
            self._keyframe_waiters.append(waiter)
        return waiter

    def _wake_keyframe_waiters(self, error: BaseException | None) -> None:
        waiters, self._keyframe_waiters = self._keyframe_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
