"""Python host: stream a video file, or a generated test pattern with a clock and a tone, into a room.

    python -m client_demo.host --room demo --server ws://127.0.0.1:8080 [--file clip.mp4]

Joins with a host token (the dev endpoint's, --token, or one signed with LIVEROOM_SECRET),
publishes over the room's WebSocket (docs/PROTOCOL.md: publish -> answer), prints stream
stats once a second, and reconnects with backoff when the server goes away (to the next of
several comma-separated --server URLs: the room's media follows the host to that node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import logging
import math
import os
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from client_demo.common import DEFAULT_SERVER, Backoff, get_token, pack, unpack, ws_url
from server.deadline import within
from server.wire.protocol import NO_RETRY_CODES, ErrorCode

VIDEO_RATE = 90000
AUDIO_RATE = 48000
AUDIO_PTIME = 0.02
# retrying cannot help: the server's no-retry close codes, and a refusal to publish
FATAL_CODES = {int(code) for code in NO_RETRY_CODES} | {int(ErrorCode.MEDIA_FORBIDDEN)}

log = logging.getLogger("liveroom.host")


class Fatal(Exception):
    """The server refused us for good (bad token, banned, not allowed to publish)."""


class PublishRefused(ConnectionError):
    """The node refused to publish for now (e.g. the room's media is still held by a dead node)."""


# -- test pattern --------------------------------------------------------------------------------

# Colour bars (Y, U, V) as in the SMPTE pattern: white, yellow, cyan, green, magenta, red, blue.
_BARS = [
    (235, 128, 128),
    (210, 16, 146),
    (170, 166, 16),
    (145, 54, 34),
    (106, 202, 222),
    (81, 90, 240),
    (41, 240, 110),
]
# Seven-segment digits: segments a b c d e f g.
_SEGMENTS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abdeg",
    "3": "abcdg",
    "4": "bcfg",
    "5": "acdfg",
    "6": "acdefg",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
}


def _fill(plane: bytearray, stride: int, x0: int, y0: int, x1: int, y1: int, value: int) -> None:
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(x1, stride), min(y1, len(plane) // stride)
    if x1 <= x0:
        return
    row = bytes([value]) * (x1 - x0)
    for y in range(y0, y1):
        start = y * stride + x0
        plane[start : start + len(row)] = row


class PatternVideo(MediaStreamTrack):
    """Colour bars, a bouncing box, the wall clock (HH:MM:SS.mmm) and a frame counter."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 360, fps: float = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width - width % 2, height - height % 2, fps
        self.frames = 0
        self._start: float | None = None
        w, h = self.width, self.height
        top = (h * 2 // 3) & ~1

        def bar(x: int) -> tuple[int, int, int]:
            return _BARS[min(len(_BARS) - 1, x * len(_BARS) // w)]

        y_row = bytes(bar(x)[0] for x in range(w))
        u_row = bytes(bar(2 * x)[1] for x in range(w // 2))
        v_row = bytes(bar(2 * x)[2] for x in range(w // 2))
        ramp = bytes(16 + (219 * x) // max(1, w - 1) for x in range(w))  # grey ramp below the bars
        grey = bytes([128]) * (w // 2)
        self._y = y_row * top + ramp * (h - top)
        self._u = u_row * (top // 2) + grey * (h // 2 - top // 2)
        self._v = v_row * (top // 2) + grey * (h // 2 - top // 2)

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self.frames / self.fps - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = self._draw(self.frames, time.time())
        frame.pts = int(self.frames * VIDEO_RATE / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        self.frames += 1
        return frame

    def _draw(self, n: int, now: float) -> VideoFrame:
        w, h = self.width, self.height
        y, u, v = bytearray(self._y), bytearray(self._u), bytearray(self._v)
        # a box bouncing left and right, so motion (and stalls) are obvious
        size = h // 6
        span = w - size
        x = int(abs((n * 6) % (2 * span) - span))
        top = ((h * 2 // 3) & ~1) - size - 8
        _fill(y, w, x, top, x + size, top + size, 235)
        _fill(u, w // 2, x // 2, top // 2, (x + size) // 2, (top + size) // 2, 128)
        _fill(v, w // 2, x // 2, top // 2, (x + size) // 2, (top + size) // 2, 128)
        # the clock on a black band
        local = time.localtime(now)
        text = time.strftime("%H:%M:%S", local) + f".{int(now * 1000) % 1000:03d}"
        self._text(y, u, v, text, 16, 16, scale=max(1, h // 180))
        scale = max(1, h // 180)
        self._text(y, u, v, f"{n:06d}", 16, h - 16 - 28 * scale, scale=scale)
        frame = VideoFrame(w, h, "yuv420p")
        for plane, data, width in zip(frame.planes, (y, u, v), (w, w // 2, w // 2), strict=True):
            if plane.line_size == width:
                plane.update(bytes(data))
            else:  # rows padded for alignment
                pad = bytes(plane.line_size - width)
                rows = (data[i : i + width] + pad for i in range(0, len(data), width))
                plane.update(b"".join(rows))
        return frame

    def _text(
        self, y: bytearray, u: bytearray, v: bytearray, text: str, x0: int, y0: int, scale: int
    ) -> None:
        w = self.width
        dw, dh, t, gap = 10 * scale, 20 * scale, 2 * scale, 4 * scale
        width = sum((t if ch in ":." else dw) + gap for ch in text) + 2 * gap
        x0, y0 = x0 - x0 % 2, y0 - y0 % 2
        x1, y1 = min(w, x0 + width + width % 2), y0 + dh + 2 * gap
        _fill(y, w, x0, y0, x1, y1, 16)
        _fill(u, w // 2, x0 // 2, y0 // 2, x1 // 2, y1 // 2, 128)
        _fill(v, w // 2, x0 // 2, y0 // 2, x1 // 2, y1 // 2, 128)
        x, top = x0 + gap, y0 + gap
        for ch in text:
            if ch in ":.":
                dots = [top + dh - t] if ch == "." else [top + dh // 3, top + 2 * dh // 3]
                for dy in dots:
                    _fill(y, w, x, dy, x + t, dy + t, 235)
                x += t + gap
                continue
            mid = top + (dh - t) // 2
            rects = {
                "a": (x, top, x + dw, top + t),
                "b": (x + dw - t, top, x + dw, mid + t),
                "c": (x + dw - t, mid, x + dw, top + dh),
                "d": (x, top + dh - t, x + dw, top + dh),
                "e": (x, mid, x + t, top + dh),
                "f": (x, top, x + t, mid + t),
                "g": (x, mid, x + dw, mid + t),
            }
            for seg in _SEGMENTS.get(ch, ""):
                _fill(y, w, *rects[seg], 235)
            x += dw + gap


class ToneAudio(MediaStreamTrack):
    """A quiet 440 Hz tone with an 880 Hz beep on every wall-clock second (to check A/V sync)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.samples = int(AUDIO_RATE * AUDIO_PTIME)
        second = array("h")
        for i in range(AUDIO_RATE):
            t = i / AUDIO_RATE
            if t < 0.1:
                second.append(int(9000 * math.sin(2 * math.pi * 880 * t)))
            else:
                second.append(int(1500 * math.sin(2 * math.pi * 440 * t)))
        self._second = second.tobytes() * 2  # wraps around without a seam check
        self._start: float | None = None
        self._offset = 0
        self._n = 0

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.time()
            self._offset = int((self._start % 1) * AUDIO_RATE)  # beep on the clock's second
        else:
            wait = self._start + self._n * AUDIO_PTIME - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        pos = (self._offset + self._n * self.samples) % AUDIO_RATE
        frame = AudioFrame(format="s16", layout="mono", samples=self.samples)
        frame.planes[0].update(self._second[2 * pos : 2 * (pos + self.samples)])
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._n * self.samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._n += 1
        return frame


class Counted(MediaStreamTrack):
    """Pass frames through, counting them (frame rate for the stats line)."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.frames = 0

    async def recv(self) -> Any:
        frame = await self.source.recv()
        self.frames += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


# -- a looping file ------------------------------------------------------------------------------------


class LoopedFile(MediaStreamTrack):
    """One stream (video or audio) of a file, decoded in real time and restarted at its end.

    aiortc's MediaPlayer(loop=True) seeks back to the start, but the frames' timestamps jump
    back with it and the encoder refuses them: the stream stopped when the clip ended. Here
    timestamps keep counting across passes, and frames are paced by them.
    """

    def __init__(self, path: str, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.path = path
        self.passes = 0
        self._frames: Any = None
        self._container: Any = None
        self._resampler = (
            av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE) if kind == "audio" else None
        )
        self._start: float | None = None  # wall clock of media time 0
        self._base = 0.0  # media seconds before the current pass
        self._first: float | None = None  # timestamp of the current pass's first frame
        self._end = 0.0  # media seconds at the end of the last frame sent

    @staticmethod
    def has(path: str, kind: str) -> bool:
        with av.open(path) as container:
            return bool(container.streams.video if kind == "video" else container.streams.audio)

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = av.open(self.path)
        streams = self._container.streams
        stream = streams.video[0] if self.kind == "video" else streams.audio[0]
        self._frames = self._decoded(stream)
        self._base, self._first = self._end, None
        self.passes += 1

    def _decoded(self, stream: Any) -> Any:
        for frame in self._container.decode(stream):
            if self._resampler is None:
                yield frame
            else:
                yield from self._resampler.resample(frame)

    def _next(self) -> Any:
        if self._frames is None:
            self._open()
        for _ in range(2):  # at the end of the file: once more from the start
            frame = next(self._frames, None)
            if frame is not None:
                return frame
            self._open()
        raise MediaStreamError

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        frame = self._next()
        at = float(frame.pts * frame.time_base) if frame.pts is not None else self._end - self._base
        if self._first is None:
            self._first = at
        t = self._base + at - self._first
        if self.kind == "video":
            frame.pts, frame.time_base = int(t * VIDEO_RATE), fractions.Fraction(1, VIDEO_RATE)
            self._end = t + 1 / 30
        else:
            frame.pts, frame.time_base = int(t * AUDIO_RATE), fractions.Fraction(1, AUDIO_RATE)
            self._end = t + frame.samples / AUDIO_RATE
        now = time.monotonic()
        if self._start is None:
            self._start = now - t
        elif (wait := self._start + t - now) > 0:
            await asyncio.sleep(wait)
        return frame

    def stop(self) -> None:
        super().stop()
        if self._container is not None:
            self._container.close()
            self._container = None


# -- publishing session --------------------------------------------------------------------------------


@dataclass
class RoomView:
    online: int = 0
    likes: int = 0
    viewers_live: bool = False
    printed: dict[str, Any] = field(default_factory=dict)


def make_tracks(args: argparse.Namespace) -> tuple[list[MediaStreamTrack], Callable[[], None]]:
    """Fresh tracks for one session (a player restarts its file when we reconnect)."""
    if args.file:
        try:
            tracks = [LoopedFile(args.file, k) for k in ("video", "audio") if LoopedFile.has(args.file, k)]
        except (OSError, av.FFmpegError) as exc:
            raise Fatal(f"{args.file}: {exc}") from None
        if not tracks:
            raise Fatal(f"{args.file}: no audio or video stream")
        counted = [Counted(t) for t in tracks]

        def close() -> None:
            for t in counted:
                t.stop()

        return list(counted), close
    video = Counted(PatternVideo(args.width, args.height, args.fps))
    tracks: list[MediaStreamTrack] = [video]
    if not args.no_audio:
        tracks.append(Counted(ToneAudio()))

    def stop() -> None:
        for t in tracks:
            t.stop()

    return tracks, stop


async def publish_session(args: argparse.Namespace, backoff: Backoff) -> None:
    token = await asyncio.to_thread(
        get_token, args.server, args.room, args.user, args.name, "host", args.token
    )
    async with connect(ws_url(args.server), open_timeout=15, max_size=2**20, compression=None) as ws:
        await ws.send(pack({"t": "join", "v": 1, "token": token, "room": args.room}))
        snap = unpack(await within(ws.recv(), 15))
        if snap.get("t") == "error":
            code = int(snap.get("code", 0))
            if code in FATAL_CODES:
                raise Fatal(f"join refused: {snap.get('msg')} ({code})")
            raise ConnectionError(f"join refused: {snap.get('msg')} ({code})")
        if snap.get("t") != "snapshot":
            raise ConnectionError(f"unexpected first frame {snap.get('t')!r}")
        backoff.reset()
        view = RoomView(online=int(snap.get("online", 0)), likes=int(snap.get("likes", 0)))
        print(f"joined room {args.room!r} as {snap['you']['name']} (node {snap.get('node')})", flush=True)

        tracks, close_tracks = make_tracks(args)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            for track in tracks:
                transceiver = pc.addTransceiver(track, direction="sendonly")
                if track.kind == "video":  # one codec: the room forwards what its first host sends
                    codecs = RTCRtpSender.getCapabilities("video").codecs
                    wanted = (f"video/{args.codec.lower()}", "video/rtx")
                    transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() in wanted])
            await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers candidates here
            await ws.send(pack({"t": "publish", "sdp": pc.localDescription.sdp, "cid": "p1"}))
            failed = asyncio.Event()

            @pc.on("connectionstatechange")
            def _state() -> None:
                print(f"media connection: {pc.connectionState}", flush=True)
                if pc.connectionState == "failed":
                    failed.set()

            stats = asyncio.create_task(print_stats(pc, tracks, view, args.stats_interval))
            watch = asyncio.create_task(_close_when(failed, ws))
            try:
                await read_frames(ws, pc, view, args)
            finally:
                stats.cancel()
                watch.cancel()
        finally:
            await pc.close()
            close_tracks()


async def _close_when(failed: asyncio.Event, ws: ClientConnection) -> None:
    await failed.wait()
    await ws.close(1000, "media failed, reconnecting")


async def read_frames(
    ws: ClientConnection, pc: RTCPeerConnection, view: RoomView, args: argparse.Namespace
) -> None:
    async for data in ws:
        frame = unpack(data)
        kind = frame.get("t")
        if kind == "answer" and frame.get("cid") == "p1":
            await pc.setRemoteDescription(RTCSessionDescription(sdp=frame["sdp"], type="answer"))
            print("publishing: answer applied", flush=True)
        elif kind == "error":
            code = int(frame.get("code", 0))
            print(f"server error {code}: {frame.get('msg')}", flush=True)
            if code in FATAL_CODES:
                raise Fatal(f"{frame.get('msg')} ({code})")
            if frame.get("ref") == "p1":  # publishing refused: retry on a new connection
                raise PublishRefused(f"publish refused: {frame.get('msg')}")
        elif kind == "batch":
            for event in frame.get("events", []):
                if event["t"] == "presence":
                    view.online = event["online"]
                elif event["t"] == "likes":
                    view.likes = event["total"]
                elif event["t"] == "danmaku" and args.show_chat:
                    print(f"  💬 {event['name']}: {event['text']}", flush=True)
                elif event["t"] in LINK_EVENTS:
                    await on_link_event(ws, event, args)


LINK_EVENTS = frozenset({"link_invite", "link", "pk_round", "pk_result"})


async def on_link_event(ws: ClientConnection, event: dict[str, Any], args: argparse.Namespace) -> None:
    """Say what happens to the room's link; with --accept-links, accept invitations at once, so a
    person at one host console can start a PK with this room (the demo's second room)."""
    kind = event["t"]
    if kind == "link_invite" and event.get("to") == args.room:
        print(f"link: room {event.get('from')} invites {args.room}", flush=True)
        if args.accept_links:
            await ws.send(pack({"t": "link", "action": "accept", "room": event.get("from")}))
    elif kind == "link":
        print(f"link: {' + '.join(event.get('rooms', []))} {'on' if event.get('on') else 'off'}", flush=True)
    elif kind == "pk_round" and event.get("on"):
        print(f"pk: a {event.get('seconds')} s round starts", flush=True)
    elif kind == "pk_result":
        print(f"pk: result {event.get('scores')}, winner {event.get('winner')}", flush=True)


async def print_stats(
    pc: RTCPeerConnection, tracks: list[MediaStreamTrack], view: RoomView, interval: float
) -> None:
    if interval <= 0:
        return
    last: dict[str, tuple[float, int, int]] = {}
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        parts = []
        rtt: float | None = None
        lost = 0.0
        report = await pc.getStats()
        for stat in report.values():
            if stat.type == "outbound-rtp":
                track = next((t for t in tracks if t.kind == stat.kind), None)
                frames = track.frames if isinstance(track, Counted) else 0
                prev = last.get(stat.kind)
                last[stat.kind] = (now, stat.bytesSent, frames)
                if prev is None:
                    continue
                dt = max(1e-3, now - prev[0])
                kbps = 8 * (stat.bytesSent - prev[1]) / dt / 1000
                text = f"{stat.kind} {kbps:,.0f} kbps"
                if stat.kind == "video":
                    text += f" {(frames - prev[2]) / dt:.0f} fps"
                parts.append(text)
            elif stat.type == "remote-inbound-rtp" and stat.roundTripTime is not None:
                rtt = stat.roundTripTime if rtt is None else max(rtt, stat.roundTripTime)
                lost = max(lost, stat.fractionLost / 256)
        if not parts:
            parts.append(f"media {pc.connectionState}")
        if rtt is not None:
            parts.append(f"rtt {rtt * 1000:.0f} ms")
        parts.append(f"loss {lost:.1%}")
        parts.append(f"online {view.online}")
        parts.append(f"likes {view.likes}")
        print(time.strftime("%H:%M:%S ") + " · ".join(parts), flush=True)


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    servers = [s.strip() for s in args.server.split(",") if s.strip()]
    args.server = servers[0]
    host = urlsplit(ws_url(args.server)).hostname or ""
    if host in ("127.0.0.1", "localhost"):
        from server.media import use_loopback_candidates

        use_loopback_candidates()  # aioice leaves 127.0.0.1 out of host candidates otherwise
    if args.parent_pid:
        asyncio.get_running_loop().create_task(_exit_with_parent(args.parent_pid))
    backoff = Backoff()
    while True:
        rotate = True
        try:
            await publish_session(args, backoff)
            why = "connection closed"
        except PublishRefused as exc:
            why, rotate = str(exc), False  # the node is up: ask it again
        except Fatal as exc:
            print(f"giving up: {exc}", file=sys.stderr, flush=True)
            return 2
        except (OSError, ConnectionError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        delay = backoff.next()
        if rotate and len(servers) > 1:  # failover: the next node (the room's media moves with us)
            args.server = servers[(servers.index(args.server) + 1) % len(servers)]
        print(f"{why}; reconnecting to {args.server} in {delay:.1f} s", flush=True)
        await asyncio.sleep(delay)


async def _exit_with_parent(pid: int) -> None:
    """Started by `liveroom serve --demo`: do not outlive the server (even if it was killed)."""
    while os.getppid() == pid:
        await asyncio.sleep(1)
    print("the server process is gone; exiting", flush=True)
    os._exit(0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m client_demo.host", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help=f"WebSocket URL of the server ({DEFAULT_SERVER}); several, comma-separated: tried in turn on failure",
    )
    p.add_argument("--room", default="demo")
    p.add_argument("--user", default="pyhost", help="host user id (default pyhost)")
    p.add_argument("--name", default="Test pattern", help="display name")
    p.add_argument("--token", help="a host token (default: the dev endpoint, or signed with LIVEROOM_SECRET)")
    p.add_argument("--file", help="a video file to loop (default: a generated test pattern and tone)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=float, default=30)
    p.add_argument("--no-audio", action="store_true", help="test pattern without the tone")
    p.add_argument(
        "--codec",
        choices=("VP8", "H264"),
        default="VP8",
        help="video codec (default VP8); H264 makes an H.264 room, as OBS or a hardware encoder does",
    )
    p.add_argument("--stats-interval", type=float, default=1.0, help="seconds between stats lines (0: none)")
    p.add_argument("--show-chat", action="store_true", help="print the room's danmaku")
    p.add_argument("--accept-links", action="store_true", help="accept every link invitation (PK demo)")
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
