"""Media forwarding SFU: real aiortc publishers and viewers on 127.0.0.1.

Every wait is on an event or a future with a generous timeout (the machine may be loaded);
no test asserts a duration. The publisher is aiortc, whose VP8 encoder only makes a
keyframe at start and on PLI/FIR (gop_size 3000), so a late viewer that decodes proves
the keyframe request went upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import itertools
from collections.abc import AsyncIterator

import aioice.ice
import av
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.deadline import within
from server.media import (
    COUNTERS,
    AiortcCompatibilityError,
    MediaConfig,
    MediaError,
    MediaLimitError,
    MediaRoom,
    check_compatible,
    create_subscribe_offer,
    handle_publish_offer,
    handle_subscribe_answer,
    handle_subscribe_offer,
)
from server.media.fanout import Fanout, ForwardedTrack
from server.media.forward import EncodedFrame, FrameOrder, tap_of, to_packet
from server.media.gop_cache import GopCache
from server.media.keyframes import KeyframeRequester, is_keyframe
from server.media.loopback import loopback_host_addresses
from tests.media.pattern import PatternTrack

TIMEOUT = 30.0
WIDTH, HEIGHT = 320, 240


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice skips 127.0.0.1 when gathering; make it the only host candidate.

    ``aioice.ice.Connection.gather_candidates`` looks ``get_host_addresses`` up as a module
    global at call time, so patching it there covers every peer connection in the test
    (publisher, SFU and viewers); see ``server/media/loopback.py``.
    """
    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_host_addresses)


def client_config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])  # no public STUN server on this network


class Viewer:
    """A normal aiortc viewer: receives, and decodes, whatever the SFU sends."""

    def __init__(self, viewer_id: str) -> None:
        self.viewer_id = viewer_id
        self.pc = RTCPeerConnection(client_config())
        self.tracks: list[MediaStreamTrack] = []
        self.pc.on("track", self.tracks.append)

    def of_kind(self, kind: str) -> list[MediaStreamTrack]:
        return [t for t in self.tracks if t.kind == kind]

    async def answer(self, room: MediaRoom) -> None:
        """Server offers (initial subscribe or renegotiation), viewer answers."""
        offer = await create_subscribe_offer(room, self.viewer_id)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await handle_subscribe_answer(room, self.viewer_id, self.pc.localDescription.sdp)


class Harness:
    """Owns every peer connection of a test and closes them all at the end."""

    def __init__(self) -> None:
        self.pcs: list[RTCPeerConnection] = []
        self.rooms: list[MediaRoom] = []

    def room(self, config: MediaConfig | None = None) -> MediaRoom:
        room = MediaRoom(f"room{len(self.rooms)}", config)
        self.rooms.append(room)
        return room

    async def publish(self, room: MediaRoom, publisher_id: str, audio: bool = True) -> RTCPeerConnection:
        pc = RTCPeerConnection(client_config())
        self.pcs.append(pc)
        pc.addTrack(PatternTrack(WIDTH, HEIGHT))
        if audio:
            pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        answer = await handle_publish_offer(room, publisher_id, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return pc

    async def view(self, room: MediaRoom, viewer_id: str) -> Viewer:
        viewer = Viewer(viewer_id)
        self.pcs.append(viewer.pc)
        await viewer.answer(room)
        return viewer

    async def close(self) -> None:
        for room in self.rooms:
            await room.close()
        for pc in self.pcs:
            await pc.close()


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.close()


async def decoded(track: MediaStreamTrack) -> av.VideoFrame | av.AudioFrame:
    frame = await within(track.recv(), TIMEOUT)
    assert isinstance(frame, av.VideoFrame | av.AudioFrame)
    return frame


async def drain_until_ended(track: MediaStreamTrack) -> None:
    with pytest.raises(MediaStreamError):
        while True:
            await within(track.recv(), TIMEOUT)


def assert_never_decoded(room: MediaRoom) -> None:
    """Forwarding state, not mocks: taps active, frames tapped, nothing reached a decoder."""
    for pub in room.publications.values():
        for kind, tap in pub.taps.items():
            receiver = pub.transceivers[kind].receiver
            assert tap_of(receiver) is tap, "the forwarding hook is not installed"
            assert tap.frames_tapped > 0
            assert tap.frames_to_decoder == 0
            # The server-side remote track would hold decoded frames (nobody reads it).
            assert receiver.track._queue.empty()
    assert COUNTERS["frames_to_decoder"] == 0


# -- compatibility and pure logic -----------------------------------------------------


def test_check_compatible_on_pinned_aiortc() -> None:
    check_compatible()


def test_check_compatible_reports_missing_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    with pytest.raises(AiortcCompatibilityError, match="_send_keyframe"):
        check_compatible()


def test_keyframe_detection() -> None:
    assert is_keyframe("VP8", bytes([0x10, 0x02, 0x00]))  # frame tag bit 0 = 0: key frame
    assert not is_keyframe("VP8", bytes([0x11, 0x02, 0x00]))
    assert not is_keyframe("VP8", b"")
    sps, pps, idr, slice_ = (
        b"\x00\x00\x00\x01\x67\x42",
        b"\x00\x00\x00\x01\x68\xce",
        b"\x00\x00\x01\x65\x88",
        b"\x00\x00\x00\x01\x41\x9a",
    )
    assert is_keyframe("H264", sps + pps + idr)
    assert is_keyframe("H264", idr)
    assert not is_keyframe("H264", slice_)
    assert is_keyframe("opus", b"\xfc")


VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)


def vp8_frame(key: bool, ts: int) -> EncodedFrame:
    data = bytes([0x10 if key else 0x11]) + b"\x00" * 20
    return EncodedFrame(codec=VP8, data=data, packet=to_packet(VP8, JitterFrame(data, ts)))


@pytest.mark.asyncio
async def test_packets_carry_rtp_timestamps() -> None:
    video = to_packet(VP8, JitterFrame(b"\x10abc", 3000))
    audio = to_packet(OPUS, JitterFrame(b"\xfc", 960))
    assert (video.pts, video.time_base) == (3000, fractions.Fraction(1, 90000))
    assert (audio.pts, audio.time_base) == (960, fractions.Fraction(1, 48000))
    assert bytes(video) == b"\x10abc"


@pytest.mark.asyncio
async def test_viewer_queue_gated_on_keyframe_and_flushed_on_overflow() -> None:
    requests: list[int] = []
    fanout = Fanout("video", request_keyframe=lambda: requests.append(1), queue_frames=3)
    track = fanout.add_track()
    assert requests  # subscribing asks upstream for a keyframe
    fanout.on_frame(vp8_frame(False, 0))  # undecodable start: dropped
    assert track.queued == 0 and track.stats.dropped_waiting_keyframe == 1
    for i, key in enumerate([True, False, False]):
        fanout.on_frame(vp8_frame(key, 3000 * (i + 1)))
    assert track.queued == 3 and not track.waiting_for_keyframe
    fanout.on_frame(vp8_frame(False, 12000))  # overflow on a delta frame: flush and gate
    assert track.queued == 0 and track.waiting_for_keyframe
    assert track.stats.overflows == 1 and track.stats.dropped_overflow == 4
    fanout.on_frame(vp8_frame(True, 15000))
    packet = await within(track.recv(), TIMEOUT)
    assert packet.pts == 15000 and track.stats.frames_forwarded == 1
    fanout.end()  # publisher gone: the viewer's sender gets MediaStreamError
    with pytest.raises(MediaStreamError):
        await within(track.recv(), TIMEOUT)


@pytest.mark.asyncio
async def test_audio_queue_drops_oldest_and_gop_cache_starts_new_viewer() -> None:
    audio = ForwardedTrack("audio", max_frames=2, request_keyframe=lambda: None)
    for ts in (0, 960, 1920):
        audio.deliver(EncodedFrame(OPUS, b"\xfc", to_packet(OPUS, JitterFrame(b"\xfc", ts))), True)
    assert audio.queued == 2 and audio.stats.dropped_overflow == 1
    assert (await within(audio.recv(), TIMEOUT)).pts == 960

    requests: list[int] = []
    fanout = Fanout("video", request_keyframe=lambda: requests.append(1), gop_cache_frames=10)
    for i, key in enumerate([True, False, False]):
        fanout.on_frame(vp8_frame(key, 3000 * i))
    late = fanout.add_track()
    assert late.queued == 3 and not requests  # started from the cache, no PLI needed


@pytest.mark.asyncio
async def test_a_cached_frame_keeps_when_it_came_in() -> None:
    """The HLS tap dates frames by when they were live: a frame replayed from the GOP cache
    to a late track says when it arrived, not when it was replayed (hls/live.py)."""
    fanout = Fanout("video", request_keyframe=lambda: None, gop_cache_frames=10)
    for i, key in enumerate([True, False]):
        fanout.on_frame(dataclasses.replace(vp8_frame(key, 3000 * i), arrived=100.0 + i))
    late = fanout.add_track()
    arrivals = [(await within(late.recv_arrived(), TIMEOUT))[1] for _ in range(2)]
    assert arrivals == [100.0, 101.0]


@pytest.mark.asyncio
async def test_keyframe_requests_coalesced_not_lost() -> None:
    sent = asyncio.Queue[int]()

    async def send() -> None:
        sent.put_nowait(1)

    requester = KeyframeRequester(send, interval=0.05)
    for _ in range(5):
        requester.request()
    await within(sent.get(), TIMEOUT)  # the first goes out at once
    await within(sent.get(), TIMEOUT)  # the other four become one, later
    await within(requester.flush(), TIMEOUT)
    assert (requester.requests, requester.sent) == (5, 2)
    assert requester.coalesced == 3
    assert sent.empty()
    requester.close()


# -- real peer connections ------------------------------------------------------------


@pytest.mark.asyncio
async def test_three_viewers_decode_forwarded_frames(harness: Harness) -> None:
    room = harness.room()
    await harness.publish(room, "alice")
    viewers = [await harness.view(room, f"viewer{i}") for i in range(3)]

    for viewer in viewers:
        assert sorted(t.kind for t in viewer.tracks) == ["audio", "video"]
        video = await decoded(viewer.of_kind("video")[0])
        assert (video.width, video.height) == (WIDTH, HEIGHT)
        assert isinstance(await decoded(viewer.of_kind("audio")[0]), av.AudioFrame)

    stats = room.stats()
    video_in = stats["publishers"]["alice"]["tracks"]["video"]
    assert video_in["codec"] == "VP8" and video_in["frames_in"] > 0 and video_in["viewers"] == 3
    for viewer in viewers:
        for t in stats["viewers"][viewer.viewer_id]["tracks"]:
            assert t["frames_forwarded"] > 0 and t["bytes_forwarded"] > 0
    assert COUNTERS["frames_tapped"] > 0
    assert_never_decoded(room)


@pytest.mark.asyncio
async def test_late_viewer_decodes_thanks_to_upstream_pli(harness: Harness) -> None:
    room = harness.room()
    await harness.publish(room, "alice", audio=False)
    first = await harness.view(room, "early")
    await decoded(first.of_kind("video")[0])
    pub = room.publications["alice"]
    video = pub.fanouts["video"]
    keyframes_before, requests_before = video.stats.keyframes_in, pub.keyframes.requests
    await within(pub.keyframes.flush(), TIMEOUT)
    plis_before = pub.keyframes.sent

    late = await harness.view(room, "late")
    assert pub.keyframes.requests > requests_before  # subscribing asked for a keyframe
    frame = await decoded(late.of_kind("video")[0])

    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    await within(pub.keyframes.flush(), TIMEOUT)  # it may have been deferred
    assert pub.keyframes.sent > plis_before  # a PLI went upstream...
    assert video.stats.keyframes_in > keyframes_before  # ...and the publisher answered it
    assert_never_decoded(room)


@pytest.mark.asyncio
async def test_late_viewer_starts_from_the_gop_cache_without_a_new_keyframe(harness: Harness) -> None:
    """A publisher that never sends a second keyframe: a late viewer still decodes, from the cache."""
    # a cache long enough for the whole test (30 s at 30 fps), so it never needs refreshing
    room = harness.room(MediaConfig(gop_cache_frames=900, video_queue_frames=1400, gop_cache_bytes=1 << 30))
    pc = await harness.publish(room, "alice", audio=False)
    for sender in pc.getSenders():  # a long keyframe interval (aiortc: 3000 frames), and PLIs ignored
        sender._send_keyframe = lambda: None  # type: ignore[method-assign]
    early = await harness.view(room, "early")
    await decoded(early.of_kind("video")[0])
    video = room.publications["alice"].fanouts["video"]
    assert video.stats.keyframes_in == 1 and video.gop is not None and video.gop.warm

    late = await harness.view(room, "late")
    frame = await decoded(late.of_kind("video")[0])

    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert video.stats.keyframes_in == 1  # no new keyframe: the late viewer started from the cache
    assert video.gop.replays == 1 and video.gop.overflows == 0
    late_track = room.subscriptions["late"].tracks[0].track
    assert late_track.stats.dropped_waiting_keyframe == 0 and late_track.stats.keyframe_requests == 0
    assert_never_decoded(room)


def test_gop_cache_bounded_and_asks_for_a_keyframe_when_outgrown() -> None:
    cache = GopCache(max_frames=3, max_bytes=1 << 20)
    assert not cache.add(vp8_frame(False, 0), False) and not cache.warm  # no keyframe yet: nothing kept
    assert not cache.add(vp8_frame(True, 3000), True)
    assert not cache.add(vp8_frame(False, 6000), False) and not cache.add(vp8_frame(False, 9000), False)
    assert [f.packet.pts for f, _ in cache.replay()] == [3000, 6000, 9000]
    assert cache.add(vp8_frame(False, 12000), False)  # outgrown: dropped, ask for a keyframe once
    assert not cache.warm and cache.overflows == 1
    assert not cache.add(vp8_frame(False, 15000), False)  # not asked again for the same group
    assert not cache.add(vp8_frame(True, 18000), True) and len(cache) == 1
    small = GopCache(max_frames=100, max_bytes=len(vp8_frame(True, 0).data) * 2)
    small.add(vp8_frame(True, 0), True)
    small.add(vp8_frame(False, 3000), False)
    assert small.add(vp8_frame(False, 6000), False) and small.size == 0  # the byte bound too


@pytest.mark.asyncio
async def test_fanout_refreshes_an_outgrown_gop_cache() -> None:
    requests: list[int] = []
    fanout = Fanout("video", request_keyframe=lambda: requests.append(1), gop_cache_frames=2, queue_frames=90)
    for i, key in enumerate([True, False, False]):
        fanout.on_frame(vp8_frame(key, 3000 * i))
    assert requests == [1]  # outgrown: a keyframe asked for, so the next viewer finds it warm
    fanout.add_track()
    assert requests == [1, 1]  # the cache is cold until that keyframe: this viewer asks too


@pytest.mark.asyncio
async def test_viewer_pli_is_routed_to_publisher(harness: Harness) -> None:
    room = harness.room()
    await harness.publish(room, "alice", audio=False)
    viewer = await harness.view(room, "v")
    video_track = viewer.of_kind("video")[0]
    await decoded(video_track)
    pub = room.publications["alice"]
    forwarded = room.subscriptions["v"].tracks[0].track
    sender = room.subscriptions["v"].tracks[0].transceiver.sender
    await within(pub.keyframes.flush(), TIMEOUT)
    requests_before, sent_before = forwarded.stats.keyframe_requests, pub.keyframes.sent

    keyframe = pub.fanouts["video"].next_keyframe()  # the publisher only makes one on request

    # A real RTCP PLI from the viewer, naming the SFU's outgoing stream.
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
    await receiver._send_rtcp_pli(sender._ssrc)

    async def until_routed() -> None:
        while forwarded.stats.keyframe_requests == requests_before:
            await decoded(video_track)  # media keeps flowing while the PLI travels

    await within(until_routed(), TIMEOUT)
    await within(pub.keyframes.flush(), TIMEOUT)
    assert pub.keyframes.sent > sent_before  # forwarded upstream as a PLI
    await within(keyframe, TIMEOUT)  # and a keyframe came back


@pytest.mark.asyncio
async def test_publisher_leaving_ends_viewer_tracks(harness: Harness) -> None:
    room = harness.room()
    events: list[tuple[str, str]] = []
    unpublished = asyncio.Event()  # told after the publication's connection is closed

    def listen(event: str, publisher_id: str) -> None:
        events.append((event, publisher_id))
        if event == "unpublished":
            unpublished.set()

    room.listeners.append(listen)
    publisher = await harness.publish(room, "alice")
    viewer = await harness.view(room, "v")
    for track in viewer.tracks:
        await decoded(track)

    await publisher.close()

    for track in viewer.tracks:
        await drain_until_ended(track)
    await within(unpublished.wait(), TIMEOUT)
    assert "alice" not in room.publications
    assert all(not t.active for t in room.subscriptions["v"].tracks)
    assert events == [("published", "alice"), ("unpublished", "alice")]

    # The viewer stays connected; the next publisher reaches it by renegotiation.
    await harness.publish(room, "bob", audio=False)
    await viewer.answer(room)
    await decoded(viewer.of_kind("video")[-1])
    assert list(room.subscriptions["v"].track_map().values()) == [{"publisher_id": "bob", "kind": "video"}]


@pytest.mark.asyncio
async def test_two_publishers_reach_viewer_including_renegotiation(harness: Harness) -> None:
    room = harness.room()
    await harness.publish(room, "alice", audio=False)
    await harness.publish(room, "bob", audio=False)
    viewer = await harness.view(room, "v")
    assert len(viewer.of_kind("video")) == 2
    for track in viewer.of_kind("video"):
        await decoded(track)
    mids = room.subscriptions["v"].track_map()
    assert sorted(m["publisher_id"] for m in mids.values()) == ["alice", "bob"]

    # A third publisher joins later: the server re-offers on the same connection.
    await harness.publish(room, "carol", audio=False)
    await viewer.answer(room)
    assert len(viewer.of_kind("video")) == 3
    await decoded(viewer.of_kind("video")[2])
    assert_never_decoded(room)


@pytest.mark.asyncio
async def test_whep_style_viewer_offer_and_h264(harness: Harness) -> None:
    room = harness.room(MediaConfig(video_codec="H264"))
    await harness.publish(room, "alice")
    pc = RTCPeerConnection(client_config())
    harness.pcs.append(pc)
    tracks: list[MediaStreamTrack] = []
    pc.on("track", tracks.append)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())

    answer = await handle_subscribe_offer(room, "whep", pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    assert "H264/90000" in answer and "VP8" not in answer
    frame = await decoded(next(t for t in tracks if t.kind == "video"))
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert isinstance(await decoded(next(t for t in tracks if t.kind == "audio")), av.AudioFrame)
    assert room.publications["alice"].fanouts["video"].codec_name == "H264"
    assert_never_decoded(room)


@pytest.mark.asyncio
async def test_limits_raise_coded_errors(harness: Harness) -> None:
    room = harness.room(MediaConfig(max_publishers=1, max_viewers=1))
    await harness.publish(room, "alice", audio=False)
    with pytest.raises(MediaLimitError) as exc:
        await harness.publish(room, "bob", audio=False)
    assert exc.value.code == "too_many_publishers"
    assert set(room.publications) == {"alice"}

    await harness.view(room, "v1")
    with pytest.raises(MediaLimitError) as exc:
        await harness.view(room, "v2")
    assert exc.value.code == "too_many_viewers"
    assert set(room.subscriptions) == {"v1"}

    with pytest.raises(MediaError) as err:
        await handle_publish_offer(room, "x", "not sdp")
    assert err.value.code in {"bad_sdp", "no_media"}


def rtp_ahead(a: int, b: int) -> bool:
    """`b` is a later RTP timestamp than `a` on the wire (32-bit serial arithmetic)."""
    return 0 < (b - a) % (1 << 32) < 1 << 31


def test_frame_order_passes_newer_frames_across_a_wrap_only() -> None:
    order = FrameOrder()
    last = (1 << 32) - 3000
    assert order.next_pts(last, 90000) == last
    assert order.next_pts(last - 5 * 90000, 90000) is None  # 5 s older
    assert order.next_pts(last, 90000) is None  # the same frame again
    assert order.next_pts(3000, 90000) == last + 6000  # past the wrap: unwrapped, continuous
    assert order.next_pts((1 << 32) + 6000, 90000) == last + 9000  # aiortc's mapper's false wrap
    # a minute back is no late frame but a restarted stream: followed, time still moving on
    assert order.next_pts(9000 - 60 * 90000, 90000) == last + 9001
    assert order.next_pts(12000 - 60 * 90000, 90000) == last + 12001
    assert order.restarts == 1


@pytest.mark.asyncio
async def test_a_late_run_of_old_packets_is_not_forwarded_as_a_frame(harness: Harness) -> None:
    """A run of retransmitted packets 100+ sequence numbers late: aiortc's jitter buffer restarts
    at it and completes an old frame. The tap must not forward it: on the viewer's sender it would
    go out after newer frames, and the viewer's stream would jump back in time (#21)."""
    room = harness.room()
    await harness.publish(room, "alice", audio=False)
    pub = room.publications["alice"]
    receiver = pub.transceivers["video"].receiver
    handle = receiver._handle_rtp_packet
    got: list[RtpPacket] = []
    enough = asyncio.Event()

    async def record(packet: RtpPacket, arrival_time_ms: int) -> None:
        if packet.ssrc == pub.media_ssrc["video"]:  # not RTX
            got.append(packet)
            if len(got) >= 150:
                enough.set()
        await handle(packet, arrival_time_ms)

    track = pub.fanouts["video"].add_track()  # what a viewer's sender pulls from
    sent: list[int] = []

    async def pull() -> None:  # like a sender, at once: the queue never overflows
        while True:
            sent.append((await track.recv()).pts)

    receiver._handle_rtp_packet = record  # type: ignore[method-assign]
    puller = asyncio.ensure_future(pull())
    try:
        await within(enough.wait(), TIMEOUT)
    finally:
        puller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await puller
    # a whole old frame and the first packet of the next, 110+ packets behind the newest
    old = got[: len(got) - 110]
    starts = [i for i in range(1, len(old)) if old[i].timestamp != old[i - 1].timestamp]
    first, after = starts[-2], starts[-1]
    for packet in old[first : after + 1]:
        await handle(packet, arrival_time_ms=0)
    while track.queued:  # a frame the tap forwards is queued at once (no decoder, no task)
        sent.append((await track.recv()).pts)

    assert len(sent) > 1
    assert all(rtp_ahead(a, b) for a, b in itertools.pairwise(sent)), sent
    assert pub.taps["video"].frames_stale >= 1  # the jitter buffer did hand out the old frame
    assert room.stats()["publishers"]["alice"]["tracks"]["video"]["frames_stale"] >= 1
