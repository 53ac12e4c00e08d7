"""One LL-HLS stream per live room on the node that holds its media, never one per viewer.

A stream taps the main host's published tracks like one more viewer of the room's fan-out
(:meth:`Fanout.add_track`: the same bounded queue and keyframe gate as a WebRTC viewer), feeds
the frames to a :class:`Segmenter` on a worker thread of its own (PyAV releases the GIL while
it codes), and keeps the last segments' parts in memory with the playlist. It starts with the
first HLS request for the room and stops when no request came for `idle` seconds or the
host stops publishing. Each start gets a new stream id in every URL, so a file name never
means two different contents and caches may keep files for as long as they like.

With recording on (`--record DIR`, :mod:`.archive`) a host's stream starts when the host
publishes, is never stopped for want of requests, and hands each complete segment to its
:class:`Recording`; the recording ends with the stream (host stopped, room closed, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiortc.mediastreams import MediaStreamError

from server.deadline import within

from ..fanout import Fanout, ForwardedTrack
from ..keyframes import is_keyframe
from .playlist import LivePlaylist, PlaylistConfig, Segment, part_uri, segment_uri
from .segmenter import Fragment, Segmenter

if TYPE_CHECKING:
    from server.wire.auth import Identity

    from ..gateway import MediaGateway
    from ..room import Publication
    from .archive import Archive
    from .recording import Recording

log = logging.getLogger(__name__)

_WRAP = 1 << 32


@dataclass(frozen=True, slots=True)
class HlsConfig:
    # A player holds PART-HOLD-BACK behind the live edge, and a part is served once complete:
    # 1/3 s parts held 2 deep put hls.js ~1.9-2.2 s behind the host's clock on loopback, against
    # ~2.9-3.2 s for 0.5 s parts held 3 deep (docs/BENCHMARKS.md, "LL-HLS glass-to-glass").
    part_target: float = 0.334
    hold_back_parts: float = 2.0
    segment_target: float = 2.0
    window: int = 6  # complete segments kept behind the live edge
    idle: float = 30.0  # seconds without a request before a room's stream stops
    max_wait: float = 6.0  # a blocking request is answered (503) after this at the latest

    def playlist(self, remux: bool) -> PlaylistConfig:
        # a remuxed publisher's keyframes come when asked (PLI), a little late: room for them
        target = self.segment_target * (2 if remux else 1)
        return PlaylistConfig(
            part_target=self.part_target,
            segment_target=self.segment_target,
            target_duration=max(1, round(target + 0.49)),
            window=self.window,
            hold_back_parts=self.hold_back_parts,
        )


class _Clock:
    """RTP timestamps of one track to seconds on the loop's clock (unwrapped, anchored at arrival)."""

    def __init__(self) -> None:
        self.base: float | None = None
        self.last = 0
        self.turns = 0

    def seconds(self, rtp: int, rate: int, now: float) -> float:
        if self.base is not None and rtp < self.last and self.last - rtp > _WRAP // 2:
            self.turns += 1
        self.last = rtp
        ticks = rtp + self.turns * _WRAP
        if self.base is None:
            self.base = now - ticks / rate
        return self.base + ticks / rate


class HlsStream:
    """A room's LL-HLS output: playlist, init segment, parts and segments, and who waits for them."""

    def __init__(
        self, room_id: str, pub: Publication, config: HlsConfig, recording: Recording | None = None
    ) -> None:
        self.room_id = room_id
        self.recording = recording  # gets the init segment and each complete segment
        self.publisher_id = pub.publisher_id
        self.config = config
        self.stream_id = secrets.token_hex(4)
        self.playlist: LivePlaylist | None = None  # once the codec is known
        self.init: bytes | None = None
        self.files: dict[str, bytes] = {}  # part and segment URIs (without the stream id) -> bytes
        self.ended = False
        self.codec: str | None = None
        self.parts_made = 0
        # answers given per file name and per blocking reload ("index.m3u8?M.P"): behind a
        # cache these are its misses, ~1 per file whatever the audience (docs/API.md)
        self.served: Counter[str] = Counter()
        self._pub = pub
        self._loop = asyncio.get_running_loop()
        self.last_request = self._loop.time()
        self._epoch = time.time() - time.monotonic()  # arrival seconds -> epoch seconds
        # Each track's clock is anchored on when its first frame came in from the publisher
        # (for the fan-out's cached GOP: when it was live, not when the tap got it), so audio
        # and video share one timeline. PROGRAM-DATE-TIME correction (<= 0): the smallest
        # arrival - timestamp seen, i.e. the least delayed frame, dates the parts.
        self._lag = 0.0
        self._changed = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"hls-{room_id[:16]}")
        self._segmenter: Segmenter | None = None
        self._tracks: dict[str, ForwardedTrack] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._keyframe_asked = -1  # msn a keyframe was last asked for (remux)
        self._stopping: asyncio.Task[None] | None = None
        for kind in ("video", "audio"):
            fanout: Fanout | None = pub.fanouts.get(kind)
            if fanout is not None:
                self._tracks[kind] = fanout.add_track()
        if "video" not in self._tracks:
            raise ValueError("nothing to stream: the publisher sends no video")
        self._tasks = [self._loop.create_task(self._pump(k, t)) for k, t in self._tracks.items()]

    # -- what the HTTP side reads ----------------------------------------------------------
    @property
    def publisher_gone(self) -> bool:
        return self._pub.ended.is_set()

    def touch(self) -> None:
        self.last_request = self._loop.time()

    def uri_prefix(self) -> str:
        return f"{self.stream_id}/"

    def render(self) -> str:
        assert self.playlist is not None
        return self.playlist.render(prefix=self.uri_prefix())

    async def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Until `ready()` holds (checked after every new part), the stream ends, or timeout."""
        deadline = self._loop.time() + timeout
        while not ready():
            if self.ended:
                return ready()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await within(changed.wait(), remaining)
        return True

    def stats(self) -> dict[str, object]:
        pl = self.playlist
        return {
            "room_id": self.room_id,
            "publisher_id": self.publisher_id,
            "stream_id": self.stream_id,
            "codec": self.codec,
            "transcode": self._segmenter.transcode if self._segmenter else None,
            "parts": self.parts_made,
            "live_edge": pl.next_part() if pl else None,
            "ended": self.ended,
        }

    # -- producing ----------------------------------------------------------------------------
    async def _pump(self, kind: str, track: ForwardedTrack) -> None:
        clock = _Clock()
        fanout = self._pub.fanouts[kind]
        try:
            while True:
                packet, now = await track.recv_arrived()
                now = now or time.monotonic()  # a frame made here, not received
                rate = packet.time_base.denominator if packet.time_base else 90000
                at = clock.seconds(packet.pts or 0, rate, now)
                if kind == "video":
                    self._lag = min(self._lag, now - at)
                data = bytes(packet)
                if kind == "video":
                    if self._segmenter is None and not self._start(fanout.codec_name or "", kind):
                        return
                    key = is_keyframe(self.codec or "", data)
                    seg = self._segmenter
                    assert seg is not None
                    fragments = await self._loop.run_in_executor(self._executor, seg.video, data, at, key)
                elif self._segmenter is not None:
                    seg = self._segmenter
                    fragments = await self._loop.run_in_executor(self._executor, seg.audio, data, at)
                else:
                    continue
                self._publish(fragments)
        except MediaStreamError:
            pass  # the publisher stopped
        except Exception:
            log.exception("hls: room %s: the %s pump failed", self.room_id, kind)
        self._loop.create_task(self.stop())

    def _start(self, codec: str, kind: str) -> bool:
        try:
            self._segmenter = Segmenter(
                codec,
                with_audio="audio" in self._tracks,
                part_target=self.config.part_target,
                segment_target=self.config.segment_target,
            )
        except ValueError as exc:
            log.warning("hls: room %s: %s", self.room_id, exc)
            return False
        self.codec = codec
        if self.recording is not None:
            self.recording.codec = codec
        self.playlist = LivePlaylist(self.config.playlist(remux=not self._segmenter.transcode))
        return True

    def _publish(self, fragments: list[Fragment]) -> None:
        seg, pl = self._segmenter, self.playlist
        if not fragments or seg is None or pl is None:
            return
        if self.init is None:
            self.init = seg.init
            if self.recording is not None and seg.init is not None:
                self.recording.add_init(seg.init)
        assert seg.started_at is not None
        for fragment in fragments:
            date = self._epoch + seg.started_at + fragment.start + self._lag
            if not pl.segments and not fragment.independent:
                continue
            part, dropped = pl.add_part(fragment.duration, fragment.independent, date)
            self.files[part.uri] = fragment.data
            self.parts_made += 1
            for msn in dropped:
                self.files.pop(segment_uri(msn), None)
                for index in range(64):
                    if self.files.pop(part_uri(msn, index), None) is None:
                        break
                self._forget_served(msn)
            previous = pl.segment(part.msn - 1)
            if part.index == 0 and previous is not None and previous.complete:
                self._complete(previous)
            self._ask_keyframe(part.msn)
        self._wake()

    def _complete(self, segment: Segment) -> None:
        """A segment is complete: its file is its parts joined, and it goes to the recording."""
        data = self.files[segment.uri] = b"".join(self.files[p.uri] for p in segment.parts)
        if self.recording is not None:
            self.recording.add_segment(segment.msn, segment.duration, segment.date, data)

    def _forget_served(self, msn: int) -> None:
        """Keeps `served` as bounded as the window: a dropped segment's names go with it."""
        segment, part, reload = segment_uri(msn), f"p{msn}.", f"index.m3u8?{msn}."
        for name in [n for n in self.served if n == segment or n.startswith((part, reload))]:
            del self.served[name]

    def _ask_keyframe(self, msn: int) -> None:
        """Remux: a segment can only end at a keyframe, so ask the publisher for one on time."""
        if self._segmenter is None or self._segmenter.transcode or self.playlist is None:
            return
        current = self.playlist.segment(msn)
        due = self.config.segment_target - 1.5 * self.config.part_target
        if current is not None and current.duration >= due and self._keyframe_asked != msn:
            self._keyframe_asked = msn
            self._tracks["video"].request_keyframe()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def stop(self) -> None:
        """Stop tapping; the playlist ends (EXT-X-ENDLIST), waiting requests are answered, the
        recording is finished. Every caller returns once all of that is done."""
        if self._stopping is None:
            self._stopping = self._loop.create_task(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        self.ended = True
        for track in self._tracks.values():
            track.stop()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        seg = self._segmenter
        if seg is not None:
            with contextlib.suppress(Exception):  # the tail of the stream, if the muxer gives it
                self._publish(await self._loop.run_in_executor(self._executor, seg.close))
        if self.playlist is not None:
            self.playlist.end()
            last = self.playlist.segments[-1] if self.playlist.segments else None
            if last is not None and last.complete and last.uri not in self.files:
                self._complete(last)  # listed with EXTINF after ENDLIST: its file exists too
        self._executor.shutdown(wait=False)
        self._wake()
        if self.recording is not None:
            await self.recording.finish()


class HlsService:
    """The node's HLS streams by room: started on demand, reaped when idle or orphaned."""

    def __init__(
        self, gateway: MediaGateway, config: HlsConfig | None = None, archive: Archive | None = None
    ) -> None:
        self.gateway = gateway  # read only: its rooms and who publishes in them
        self.config = config or HlsConfig()
        self.archive = archive  # recording on: every stream records, a host's starts with its publishing
        self.streams: dict[str, HlsStream] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()  # streams ending (close waits for them)
        if archive is not None:
            gateway.on_publishing(self._on_publishing)

    def main_publisher(self, room_id: str) -> Publication | None:
        """The room's main host: a host's ready publication (else any, e.g. a co-host alone)."""
        room = self.gateway.site.rooms.get(room_id)
        if room is None:
            return None
        ready = [p for p in room.publications.values() if p.ready and not p.ended.is_set()]
        identities = self.gateway.site.identities
        hosts = [p for p in ready if getattr(identities.get((room_id, p.publisher_id)), "role", "") == "host"]
        return (hosts or ready or [None])[0]

    def stream(self, room_id: str) -> HlsStream | None:
        """The room's stream, started now if the room has a publisher here; None: nothing live."""
        stream = self.streams.get(room_id)
        if stream is not None and (stream.ended or stream.publisher_gone):
            self._spawn_stop(stream)
            stream = None
        if stream is None:
            pub = self.main_publisher(room_id)
            if pub is None or "video" not in pub.fanouts:
                return None
            recording = self.archive.start(room_id, pub.publisher_id) if self.archive is not None else None
            try:
                stream = HlsStream(room_id, pub, self.config, recording)
            except ValueError:
                if recording is not None:
                    asyncio.get_running_loop().create_task(recording.finish())  # nothing written
                raise
            self.streams[room_id] = stream
            log.info("hls: room %s: stream %s started", room_id, stream.stream_id)
            if self._reaper is None:
                self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        stream.touch()
        return stream

    def _on_publishing(self, room_id: str, event: str, who: Identity | None) -> None:
        """Recording on: a host of ours went live, so its stream starts now, asked for or not."""
        if event != "published" or who is None or who.role != "host":
            return
        try:
            self.stream(room_id)
        except ValueError as exc:  # e.g. no video: nothing to record
            log.info("hls: room %s: not recorded: %s", room_id, exc)

    def _spawn_stop(self, stream: HlsStream) -> None:
        if self.streams.get(stream.room_id) is stream:
            del self.streams[stream.room_id]
        task = asyncio.get_running_loop().create_task(stream.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _reap_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.1, self.config.idle / 4))
            for stream in list(self.streams.values()):
                idle = loop.time() - stream.last_request > self.config.idle
                if stream.ended or stream.publisher_gone or (idle and stream.recording is None):
                    self._spawn_stop(stream)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        streams, self.streams = list(self.streams.values()), {}
        # every stream's end, those already ending included: their recordings finish here
        await asyncio.gather(*(s.stop() for s in streams), *self._stopping, return_exceptions=True)
