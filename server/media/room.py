"""Per-room registry of publishers and viewers for the forwarding SFU.

A :class:`MediaRoom` knows nothing about SDP or the wire protocol (see
:mod:`server.media.signaling` for that); it wires peer connections to fan-outs:

* :meth:`MediaRoom.add_publisher` prepares a publisher's ``RTCPeerConnection`` *before*
  its offer is applied: one recvonly transceiver per kind, restricted to the publisher's codec
  (the room's, see :mod:`server.media.codecs`),
  with a :class:`~server.media.forward.ReceiverTap` so frames are forwarded, not decoded.
* :meth:`MediaRoom.subscribe` adds one sendonly transceiver per published track to a
  viewer's connection, each sending a :class:`~server.media.fanout.ForwardedTrack`, with
  the publisher's codec only, so the viewer leg carries the publisher's bitstream as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

from .codecs import H264, PROFILE_LEVEL_IDS, VP8, VideoCodec, answered_video_codec
from .errors import MediaError, MediaLimitError
from .fanout import Fanout, ForwardedTrack
from .forward import (
    ReceiverTap,
    ensure_compatible,
    install_receiver_tap,
    route_sender_keyframe_requests,
    send_pli,
    set_sender_stream_id,
)
from .keyframes import KeyframeRequester

logger = logging.getLogger(__name__)


async def close_connection(pc: RTCPeerConnection) -> None:
    """Close a peer connection, even one a malformed remote offer left half made: aiortc's
    close() assumes every transceiver got a transport and raises on the first that did not
    (a fuzzed WHEP offer with its video m-line removed did), leaving the rest open."""
    try:
        await pc.close()
    except AttributeError as exc:
        logger.debug("media: closing a half-made connection: %s", exc)
        for transceiver in pc.getTransceivers():  # those close() did not reach (bounded)
            dtls = transceiver.receiver.transport
            if dtls is None:
                continue
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    if dtls.state != "closed":
                        await dtls.stop()
                    if dtls.transport.state != "closed":
                        await dtls.transport.stop()
        # aiortc marks the connection closed only at the end of close(), and a later close()
        # awaits that mark: without it, the next close() of this connection never returns
        closed = getattr(pc, "_RTCPeerConnection__isClosed", None)
        if isinstance(closed, asyncio.Future) and not closed.done():
            closed.set_result(True)


KINDS = ("audio", "video")


@dataclass
class MediaConfig:
    """Room limits and forwarding knobs (one instance can be shared by all rooms)."""

    max_publishers: int = 4
    max_viewers: int = 200
    video_codec: str = "VP8"  # or "H264": what a room's first publisher gets if it offers both
    audio_codec: str = "opus"
    keyframe_interval: float = 0.1  # at most one upstream PLI per publisher per interval
    keyframe_retry: float = 1.0  # a viewer still waiting for a keyframe asks again after this
    video_queue_frames: int = 90  # per viewer; overflow flushes and waits for a keyframe
    audio_queue_frames: int = 50  # per viewer; overflow drops the oldest frame
    gop_cache_frames: int = 0  # >0: replay last keyframe + following frames to new viewers (gop_cache.py)
    gop_cache_bytes: int = 4 << 20  # and at most this many bytes per video track
    ice_servers: list[RTCIceServer] = field(default_factory=list)

    def rtc_configuration(self) -> RTCConfiguration:
        """No STUN by default (no public server is reachable here); max-bundle.

        max-bundle, because with aiortc 1.16's default "balanced" policy a second track of
        the same kind stays on a transport that BUNDLE then stops (two publishers' videos
        to one viewer would break).
        """
        return RTCConfiguration(iceServers=list(self.ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)

    @property
    def video_preference(self) -> tuple[str, ...]:
        """Room codec order for a first publisher offering several: the configured one first."""
        return (self.video_codec, *(c for c in (VP8, H264) if c != self.video_codec))


def codec_preferences(
    kind: str, codec: VideoCodec | None, audio_codec: str = "opus"
) -> list[RTCRtpCodecCapability]:
    """aiortc capabilities for one codec (one H.264 profile), plus RTX for video.

    ``codec`` None for video: every forwardable video codec (an edge's pull, which learns
    the codec from the origin's answer).
    """
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if kind != "video":
        chosen = [c for c in caps if c.name.lower() == audio_codec.lower()]
    else:
        wanted = {
            PROFILE_LEVEL_IDS[p] for p in PROFILE_LEVEL_IDS if codec is None or codec.profile in (None, p)
        }
        chosen = [
            c
            for c in caps
            if (codec is None or c.name.upper() == codec.name)
            and (
                c.name.upper() == VP8
                or (c.name.upper() == H264 and c.parameters.get("profile-level-id") in wanted)
            )
        ]
    if not chosen:
        raise MediaError("codec_unsupported", f"aiortc cannot packetize {kind} codec {codec or audio_codec}")
    if kind == "video":
        chosen += [c for c in caps if c.name.lower() == "rtx"]
    return chosen


def _stream_token(publisher_id: str) -> str:
    token = re.sub(r"[^A-Za-z0-9_.\-]", "_", publisher_id)[:64]
    return token or "publisher"


class Publication:
    """One publisher's connection and its (up to one audio, one video) published tracks."""

    def __init__(
        self,
        publisher_id: str,
        pc: RTCPeerConnection,
        config: MediaConfig,
        video_codec: VideoCodec | None = None,
    ) -> None:
        self.publisher_id = publisher_id
        self.pc = pc
        self.config = config
        self.video_codec = video_codec  # None until known (an edge's pull learns it from the answer)
        self.transceivers: dict[str, RTCRtpTransceiver] = {}
        self.taps: dict[str, ReceiverTap] = {}
        self.fanouts: dict[str, Fanout] = {}
        self.media_ssrc: dict[str, int] = {}
        self.keyframes = KeyframeRequester(self._send_pli, interval=config.keyframe_interval)
        self.ended = asyncio.Event()
        self.ready = False  # offer applied and answered

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if k in self.fanouts]

    def _add_kind(self, kind: str, on_end: Callable[[], None]) -> None:
        transceiver = self.pc.addTransceiver(kind, direction="recvonly")
        transceiver.setCodecPreferences(codec_preferences(kind, self.video_codec, self.config.audio_codec))
        fanout = Fanout(
            kind,
            request_keyframe=self.keyframes.request,
            queue_frames=(
                self.config.video_queue_frames if kind == "video" else self.config.audio_queue_frames
            ),
            keyframe_retry=self.config.keyframe_retry,
            gop_cache_frames=self.config.gop_cache_frames,
            gop_cache_bytes=self.config.gop_cache_bytes,
        )
        self.transceivers[kind] = transceiver
        self.fanouts[kind] = fanout
        self.taps[kind] = install_receiver_tap(transceiver.receiver, fanout.on_frame, on_end)

    def _drop_kind(self, kind: str) -> None:
        """Forget a kind the offer did not contain (its transceiver stays unused)."""
        self.fanouts.pop(kind).end()
        self.taps.pop(kind)
        self.transceivers.pop(kind).direction = "inactive"

    def learn_remote_description(self) -> None:
        """Record the publisher's SSRCs from its offer: PLI must name the media SSRC.

        An edge's pull (we offered) learns the video codec from the origin's answer here.
        """
        desc = self.pc.remoteDescription
        if desc is None:
            return
        if self.video_codec is None and "video" in self.transceivers and desc.type == "answer":
            self.video_codec = answered_video_codec(desc.sdp)
        parsed = SessionDescription.parse(desc.sdp)
        for kind, transceiver in self.transceivers.items():
            for media in parsed.media:
                if media.rtp.muxId != transceiver.mid:
                    continue
                fid = next((g for g in media.ssrc_group if g.semantic == "FID"), None)
                if fid is not None and fid.items:
                    self.media_ssrc[kind] = int(fid.items[0])
                elif media.ssrc:
                    self.media_ssrc[kind] = media.ssrc[0].ssrc

    async def _send_pli(self) -> None:
        transceiver = self.transceivers.get("video")
        if transceiver is None:
            return
        receiver = transceiver.receiver
        ssrc = self.media_ssrc.get("video")
        # Without a=ssrc in the offer, ask every SSRC seen (a PLI naming RTX is ignored).
        ssrcs = [ssrc] if ssrc is not None else [s.source for s in receiver.getSynchronizationSources()]
        for media_ssrc in ssrcs:
            await send_pli(receiver, media_ssrc)

    def stats(self) -> dict[str, Any]:
        """Plain-dict counters: frames/bytes in, keyframes, viewers, PLIs sent upstream."""
        tracks: dict[str, Any] = {}
        for kind, fanout in self.fanouts.items():
            tap = self.taps[kind]
            tracks[kind] = {
                "codec": fanout.codec_name,
                "viewers": len(fanout.tracks),
                "frames_tapped": tap.frames_tapped,
                "frames_to_decoder": tap.frames_to_decoder,
                "frames_stale": tap.frames_stale,
                **fanout.stats.as_dict(),
            }
        return {
            "publisher_id": self.publisher_id,
            "video_codec": str(self.video_codec) if self.video_codec else None,
            "tracks": tracks,
            "keyframe_requests": self.keyframes.requests,
            "plis_sent": self.keyframes.sent,
        }


@dataclass
class SubscribedTrack:
    """One published track as seen by one viewer."""

    publisher_id: str
    kind: str
    track: ForwardedTrack
    transceiver: RTCRtpTransceiver
    active: bool = True

    def stats(self) -> dict[str, Any]:
        return {
            "publisher_id": self.publisher_id,
            "kind": self.kind,
            "mid": self.transceiver.mid,
            "active": self.active,
            "queued": self.track.queued,
            **self.track.stats.as_dict(),
        }


class Subscription:
    """One viewer's connection and the forwarded tracks it receives."""

    def __init__(self, viewer_id: str, pc: RTCPeerConnection) -> None:
        self.viewer_id = viewer_id
        self.pc = pc
        self.tracks: list[SubscribedTrack] = []

    def has(self, publisher_id: str, kind: str) -> bool:
        """An active track of this publisher and kind (one that ended is replaced on republish)."""
        return any(t.active and t.publisher_id == publisher_id and t.kind == kind for t in self.tracks)

    def track_map(self) -> dict[str, dict[str, str]]:
        """``{mid: {"publisher_id", "kind"}}`` for negotiated tracks, to tell the client."""
        return {
            t.transceiver.mid: {"publisher_id": t.publisher_id, "kind": t.kind}
            for t in self.tracks
            if t.active and t.transceiver.mid is not None
        }

    def stats(self) -> dict[str, Any]:
        """Per forwarded track: frames/bytes sent, drops, keyframe requests."""
        return {"viewer_id": self.viewer_id, "tracks": [t.stats() for t in self.tracks]}


class MediaRoom:
    """Publishers and viewers of one room; forwards encoded media, never decodes it.

    Use it from the event loop that runs the peer connections.

    ``listeners`` are called as ``listener(event, publisher_id)`` with event
    ``"published"`` (offer answered) or ``"unpublished"``, e.g. to renegotiate viewers.
    """

    def __init__(self, room_id: str, config: MediaConfig | None = None) -> None:
        ensure_compatible()
        self.room_id = room_id
        self.config = config or MediaConfig()
        self.publications: dict[str, Publication] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.listeners: list[Callable[[str, str], None]] = []
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- publishers ------------------------------------------------------------------
    @property
    def video_codec(self) -> str | None:
        """The room's video codec name (``VP8``/``H264``): its video publishers', None if none."""
        for pub in self.publications.values():
            if pub.video_codec is not None and "video" in pub.transceivers:
                return pub.video_codec.name
        return None

    def add_publisher(
        self,
        publisher_id: str,
        pc: RTCPeerConnection,
        kinds: Iterable[str] = KINDS,
        video_codec: VideoCodec | None = None,
    ) -> Publication:
        """Register a publisher and prepare ``pc`` (before ``setRemoteDescription``).

        ``kinds`` must follow the order of the offer's m-lines (see
        :func:`server.media.signaling.offered_kinds`); ``video_codec`` is the one chosen for
        the publisher (:func:`server.media.codecs.choose_publish_codec`), None: learn it.
        A publisher with another codec than the room's is refused (``codec_mismatch``).
        Raises :class:`MediaLimitError` (``too_many_publishers``) or :class:`MediaError`.
        """
        self._check_open()
        if publisher_id in self.publications:
            raise MediaError("already_publishing", f"{publisher_id!r} is already publishing")
        if len(self.publications) >= self.config.max_publishers:
            raise MediaLimitError(
                "too_many_publishers",
                f"room {self.room_id!r} allows {self.config.max_publishers} publishers",
            )
        # Create transceivers in the offer's m-line order: with max-bundle, aiortc 1.16
        # keeps the first transceiver's transport and drops the others' (stopping the
        # primary one if the first m-line belongs to a later transceiver).
        kinds = [k for k in dict.fromkeys(kinds) if k in KINDS]
        if not kinds:
            raise MediaError("no_media", "nothing to publish")
        room_codec = self.video_codec
        if video_codec is not None and "video" in kinds and room_codec not in (None, video_codec.name):
            raise MediaError("codec_mismatch", f"this room forwards {room_codec}, not {video_codec.name}")
        pub = Publication(publisher_id, pc, self.config, video_codec)
        for kind in kinds:
            pub._add_kind(kind, lambda kind=kind: self._on_track_ended(pub, kind))
        self.publications[publisher_id] = pub
        self._watch(pc, lambda: self.remove_publisher(publisher_id, pub))
        return pub

    def publication_ready(self, publisher_id: str) -> None:
        """Mark a publication negotiated: drop kinds the offer lacked, notify listeners."""
        pub = self.publications.get(publisher_id)
        if pub is None:
            raise MediaError("bad_state", f"{publisher_id!r} left during negotiation")
        for kind in list(pub.fanouts):
            if pub.transceivers[kind].mid is None:
                pub._drop_kind(kind)
        pub.learn_remote_description()
        pub.ready = True
        self._notify("published", publisher_id)

    async def remove_publisher(self, publisher_id: str, only: Publication | None = None) -> None:
        """Stop a publication: its viewers' tracks end and its connection is closed."""
        pub = self.publications.get(publisher_id)
        if pub is None or (only is not None and pub is not only):
            return
        del self.publications[publisher_id]
        pub.keyframes.close()
        for kind in pub.kinds:
            pub.fanouts[kind].end()
        await asyncio.gather(*(self._end_viewer_tracks(publisher_id, k) for k in pub.kinds))
        pub.ended.set()
        await close_connection(pub.pc)
        if pub.ready:
            self._notify("unpublished", publisher_id)

    # -- viewers ---------------------------------------------------------------------
    def subscribe(
        self,
        viewer_id: str,
        pc: RTCPeerConnection,
        publisher_ids: Iterable[str] | None = None,
        mline_kinds: Sequence[str] | None = None,
    ) -> Subscription:
        """Add sendonly transceivers to ``pc`` for published tracks (before the offer).

        Calling it again for the same viewer and ``pc`` adds tracks published since,
        for renegotiation. Each new video track asks its publisher for a keyframe.
        ``mline_kinds`` (when answering a viewer's offer) lists the offer's m-line kinds:
        tracks are then created in that order, one per m-line, so aiortc binds them
        1:1 and keeps the right bundle transport; tracks left over are not subscribed.
        Raises :class:`MediaLimitError` (``too_many_viewers``) or :class:`MediaError`.
        """
        self._check_open()
        wanted = set(self.publications) if publisher_ids is None else set(publisher_ids)
        for publisher_id in wanted - set(self.publications):
            raise MediaError("unknown_publisher", f"no publisher {publisher_id!r}")
        sub = self.subscriptions.get(viewer_id)
        if sub is None:
            if len(self.subscriptions) >= self.config.max_viewers:
                raise MediaLimitError(
                    "too_many_viewers", f"room {self.room_id!r} allows {self.config.max_viewers} viewers"
                )
            sub = Subscription(viewer_id, pc)
            self.subscriptions[viewer_id] = sub
            self._watch(pc, lambda: self.remove_viewer(viewer_id, sub))
        elif sub.pc is not pc:
            raise MediaError("already_subscribed", f"{viewer_id!r} already has a connection")
        todo = [
            (pub, kind)
            for pub in self.publications.values()
            if pub.publisher_id in wanted
            for kind in pub.kinds
            if not sub.has(pub.publisher_id, kind)
        ]
        if mline_kinds is not None:
            ordered = []
            for mline_kind in mline_kinds:
                match = next((item for item in todo if item[1] == mline_kind), None)
                if match is not None:
                    todo.remove(match)
                    ordered.append(match)
            todo = ordered
        for pub, kind in todo:
            sub.tracks.append(self._attach(pub, kind, pc))
        return sub

    def _attach(self, pub: Publication, kind: str, pc: RTCPeerConnection) -> SubscribedTrack:
        track = pub.fanouts[kind].add_track()
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(kind, pub.video_codec, self.config.audio_codec))
        # Group a publisher's audio and video in one MediaStream on the viewer side.
        set_sender_stream_id(transceiver.sender, _stream_token(pub.publisher_id))
        route_sender_keyframe_requests(transceiver.sender, track.request_keyframe)
        return SubscribedTrack(pub.publisher_id, kind, track, transceiver)

    async def remove_viewer(self, viewer_id: str, only: Subscription | None = None) -> None:
        """Stop forwarding to a viewer and close its connection."""
        sub = self.subscriptions.get(viewer_id)
        if sub is None or (only is not None and sub is not only):
            return
        del self.subscriptions[viewer_id]
        for t in sub.tracks:
            t.active = False
            t.track.stop()
        await close_connection(sub.pc)

    # -- room ------------------------------------------------------------------------
    async def close(self) -> None:
        """Close every connection in the room."""
        self.closed = True
        await asyncio.gather(
            *(self.remove_publisher(p) for p in list(self.publications)),
            *(self.remove_viewer(v) for v in list(self.subscriptions)),
        )
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        """Plain-dict snapshot of every publication and subscription."""
        return {
            "room_id": self.room_id,
            "publishers": {p: pub.stats() for p, pub in self.publications.items()},
            "viewers": {v: sub.stats() for v, sub in self.subscriptions.items()},
        }

    # -- internals -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise MediaError("room_closed", f"room {self.room_id!r} is closed")

    def _notify(self, event: str, publisher_id: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, publisher_id)
            except Exception:
                logger.exception("media: room listener failed on %s", event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch(self, pc: RTCPeerConnection, on_gone: Callable[[], Any]) -> None:
        @pc.on("connectionstatechange")
        def _changed() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._spawn(on_gone())

    def _on_track_ended(self, pub: Publication, kind: str) -> None:
        """Publisher's receiver stopped (RTCP BYE, transport gone, close)."""
        fanout = pub.fanouts.get(kind)
        if fanout is not None:
            fanout.end()
        if self.publications.get(pub.publisher_id) is not pub:
            return
        if all(f.ended.is_set() for f in pub.fanouts.values()):
            self._spawn(self.remove_publisher(pub.publisher_id, pub))
        else:
            self._spawn(self._end_viewer_tracks(pub.publisher_id, kind))

    async def _end_viewer_tracks(self, publisher_id: str, kind: str) -> None:
        """Stop viewers' senders for an ended track; the RTCP BYE ends their remote track."""
        stops = []
        for sub in self.subscriptions.values():
            for t in sub.tracks:
                if t.active and t.publisher_id == publisher_id and t.kind == kind:
                    t.active = False
                    t.track.end()
                    t.transceiver.direction = "inactive"
                    stops.append(t.transceiver.sender.stop())
        await asyncio.gather(*stops, return_exceptions=True)
