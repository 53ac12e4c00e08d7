"""An RTMP stream read by FFmpeg (through PyAV) as two aiortc tracks: H.264 as is, AAC decoded.

Why: an RTMP encoder's stream enters the room through the same WebRTC publisher as a WHIP host
(server.edge.rtmp). The video track yields *encoded* H.264 packets (Annex B, what aiortc's
H.264 packetizer takes; FLV carries AVCC, hence the `h264_mp4toannexb` filter): no decoding,
no re-encoding. The audio track yields decoded AAC as 48 kHz stereo PCM, which the publisher's
aiortc sender encodes to Opus: one AAC -> Opus transcode per RTMP room, whatever the viewers.

FFmpeg's demuxer blocks, so it runs in one thread per stream; packets cross to the event loop
through bounded queues (a stalled consumer drops, never grows memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from fractions import Fraction
from typing import Any

import av
import av.bitstream
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

QUEUE = 256  # packets or frames per track (about 8 s of 30 fps video)
READ_TIMEOUT_US = 10_000_000  # FFmpeg rw_timeout: a stalled stream ends the pull after 10 s
AUDIO_RATE = 48000


class QueuedTrack(MediaStreamTrack):
    """A track fed from the pull thread; None in the queue ends it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE)

    def push(self, item: Any) -> None:
        if self.queue.full() and item is not None:
            return  # the publisher is behind: drop (RTMP is live; the next keyframe recovers)
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self.queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        return item


class RtmpPull:
    """Reads `url` (FFmpeg's RTMP client) in a thread until the stream ends or `stop()`."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.loop = loop
        self.video = QueuedTrack("video")
        self.audio = QueuedTrack("audio")
        self.ended = asyncio.Event()
        self.error: str | None = None  # why it ended, if not a clean end of stream
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtmp-pull", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (at its next packet, or when FFmpeg's read times out)."""
        self._stopping.set()

    def _emit(self, track: QueuedTrack, item: Any) -> None:
        self._call(track.push, item)

    def _call(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us (process exit)
            self.loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        try:
            self._read()
        except Exception as exc:  # FFmpeg's errors (stream gone, timeout, bad data): the pull ends
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            for track in (self.video, self.audio):
                self._emit(track, None)
            self._call(self.ended.set)

    def _read(self) -> None:
        options = {"rw_timeout": str(READ_TIMEOUT_US), "rtmp_live": "live"}
        with av.open(self.url, options=options, timeout=READ_TIMEOUT_US / 1e6) as container:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            if video is None or video.codec_context.name != "h264":
                raise ValueError("the RTMP stream has no H.264 video")
            annexb = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", video)
            resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE)
            streams = [s for s in (video, audio) if s is not None]
            for packet in container.demux(*streams):
                if self._stopping.is_set():
                    return
                if packet.size == 0 or packet.pts is None:
                    continue  # a flush packet, or one without a time
                if packet.stream is video:
                    for out in annexb.filter(packet):
                        out.time_base = out.time_base or video.time_base
                        self._emit(self.video, out)
                else:
                    for frame in packet.decode():
                        for pcm in resampler.resample(frame):  # type: ignore[arg-type]
                            pcm.time_base = Fraction(1, AUDIO_RATE)
                            self._emit(self.audio, pcm)
