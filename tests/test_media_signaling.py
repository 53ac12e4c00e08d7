"""Media signaling end to end: a real server, real WebSockets, real aiortc peers on 127.0.0.1.

Publishers and viewers are aiortc peer connections (the server binds 127.0.0.1, so it gathers
loopback candidates only; see server/media/loopback.py). Every wait is on a frame, an event or
a decoded frame, with a generous timeout; no test asserts a duration. aiortc's VP8 encoder only
makes keyframes at start and on PLI, so a viewer that joins late and decodes proves the
server asked the publisher for a keyframe.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import av
import msgpack
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from prometheus_client import REGISTRY
from websockets.asyncio.client import ClientConnection, connect

from server.app import App
from server.config import Config
from server.deadline import within
from server.media import COUNTERS, loopback_candidates
from server.media.forward import tap_of
from server.wire.protocol import ErrorCode
from tests import prom
from tests.conftest import token
from tests.media.pattern import PatternTrack

TIMEOUT = 30.0  # generous: a loaded 2-core machine runs encoders, decoders and the SFU
WIDTH, HEIGHT = 160, 120  # small frames keep the encoders cheap


@pytest.fixture(autouse=True)
def loopback() -> Any:
    """The test's own peers also gather 127.0.0.1 only (no other interface is reachable)."""
    with loopback_candidates():
        yield


@pytest.fixture
def config() -> Config:
    return Config(
        port=0,
        http_port=0,
        tick_ms=20,
        node_id="test-node",
        join_timeout=5.0,
        media_max_publishers=2,
        media_max_viewers=4,
        media_stats_interval=0,  # the tests call sample() themselves
    )


class Conn:
    """A joined WebSocket client that sorts incoming frames: batch events in a list, others by type."""

    def __init__(self, ws: ClientConnection, snapshot: dict[str, Any]) -> None:
        self.ws = ws
        self.snapshot = snapshot
        self.events: list[dict[str, Any]] = []
        self.frames: defaultdict[str, asyncio.Queue[dict[str, Any]]] = defaultdict(asyncio.Queue)
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.pcs: list[RTCPeerConnection] = []
        self.tracks: list[MediaStreamTrack] = []

    async def _read(self) -> None:
        async for data in self.ws:
            frame = msgpack.unpackb(data)
            if frame["t"] == "batch":
                self.events.extend(frame["events"])
                self._changed.set()
            else:
                self.frames[frame["t"]].put_nowait(frame)

    async def send(self, **frame: Any) -> None:
        await self.ws.send(msgpack.packb(frame))

    async def next(self, kind: str) -> dict[str, Any]:
        return await within(self.frames[kind].get(), TIMEOUT)

    async def error(self) -> int:
        return (await self.next("error"))["code"]

    async def event(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    # -- media ---------------------------------------------------------------------------

    def new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.on("track", self.tracks.append)
        self.pcs.append(pc)
        return pc

    async def publish_offer(self, audio: bool = True) -> RTCPeerConnection:
        pc = self.new_pc()
        pc.addTrack(PatternTrack(WIDTH, HEIGHT))
        if audio:
            pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        await self.send(t="publish", sdp=pc.localDescription.sdp, cid="pub")
        return pc

    async def publish(self, audio: bool = True) -> RTCPeerConnection:
        pc = await self.publish_offer(audio)
        answer = await self.next("answer")
        assert answer["cid"] == "pub"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return pc

    async def accept_offer(self) -> dict[str, Any]:
        """Answer the server's next offer (first subscribe or renegotiation)."""
        offer = await self.next("offer")
        pc = self.pcs[-1] if self.pcs else self.new_pc()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send(t="answer", sdp=pc.localDescription.sdp)
        return offer

    def of_kind(self, kind: str) -> list[MediaStreamTrack]:
        return [t for t in self.tracks if t.kind == kind]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        for pc in self.pcs:
            await pc.close()


async def join(port: int, user: str, role: str = "viewer", room: str = "r1") -> Conn:
    """A member's WebSocket on the node at `port`, after its snapshot."""
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token(room, user, role)}")  # type: ignore[arg-type]
    snapshot = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
    assert snapshot["t"] == "snapshot", snapshot
    return Conn(ws, snapshot)


@pytest.fixture
async def member(app: App) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Conn] = []

    async def _member(user: str, role: str = "viewer", room: str = "r1") -> Conn:
        conn = await join(app.port, user, role, room)
        opened.append(conn)
        return conn

    yield _member
    for conn in opened:
        await conn.close()


async def decoded(track: MediaStreamTrack) -> av.VideoFrame | av.AudioFrame:
    frame = await within(track.recv(), TIMEOUT)
    assert isinstance(frame, av.VideoFrame | av.AudioFrame)
    return frame


async def ended(track: MediaStreamTrack) -> None:
    with pytest.raises(MediaStreamError):
        while True:
            await within(track.recv(), TIMEOUT)


def is_live(uid: str, on: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["t"] == "live" and e["uid"] == uid and e["on"] is on


def assert_forwarded_not_decoded(app: App, room_id: str = "r1") -> None:
    for pub in app.media.rooms[room_id].publications.values():
        for kind, tap in pub.taps.items():
            assert tap_of(pub.transceivers[kind].receiver) is tap  # the forwarding hook is in place
            assert tap.frames_tapped > 0 and tap.frames_to_decoder == 0
    assert COUNTERS["frames_to_decoder"] == 0


# -- tests --------------------------------------------------------------------------------


async def test_ws_publish_three_viewers_decode(app: App, member) -> None:
    tapped_before = COUNTERS["frames_tapped"]
    decoded_before = REGISTRY.get_sample_value("liveroom_media_frames_decoded_total") or 0.0
    host = await member("hana", role="host")
    await host.publish()
    live = await host.event(is_live("hana", True))
    assert live["node"] == "test-node" and live["url"] == app.media.url

    viewers = [await member(f"v{i}") for i in range(3)]
    for viewer in viewers:
        snap = viewer.snapshot
        assert snap["live"] is True and snap["publishers"] == [{"uid": "hana", "name": "hana"}]
        assert snap["media_node"] == "test-node" and snap["media_url"].startswith("http://127.0.0.1:")
        await viewer.send(t="subscribe", cid=7)
    for viewer in viewers:
        offer = await viewer.accept_offer()
        assert offer["cid"] == 7
        assert sorted((m["publisher_id"], m["kind"]) for m in offer["tracks"].values()) == [
            ("hana", "audio"),
            ("hana", "video"),
        ]
    for viewer in viewers:
        frame = await decoded(viewer.of_kind("video")[0])
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert isinstance(await decoded(viewer.of_kind("audio")[0]), av.AudioFrame)

    assert COUNTERS["frames_tapped"] > tapped_before
    assert_forwarded_not_decoded(app)
    stats = app.media.rooms["r1"].stats()
    assert stats["publishers"]["hana"]["tracks"]["video"]["viewers"] == 3
    await app.media.sample()  # two samples: rates need a previous one
    await app.media.sample()
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.port}/metrics") as resp:
        text = await resp.text()
    assert prom.sample(text, "liveroom_media_viewers") == 3
    assert prom.sample(text, "liveroom_media_publishers") == 1
    assert (prom.sample(text, "liveroom_media_publisher_bitrate_bps_count", kind="video") or 0) >= 1
    assert prom.sample(text, "liveroom_media_frames_decoded_total") == decoded_before  # forwarded only


async def test_subscribe_before_live_then_late_viewer(app: App, member) -> None:
    app.media.media_config.gop_cache_frames = 0  # the PLI path (tests/media: the GOP cache's)
    early = await member("early")
    await early.send(t="subscribe")
    waiting = await early.next("subscribed")
    assert waiting["live"] is False

    host = await member("hana", role="host")
    await host.publish(audio=False)
    offer = await early.accept_offer()  # renegotiation: offered when the publisher appeared
    assert [m["publisher_id"] for m in offer["tracks"].values()] == ["hana"]
    await decoded(early.of_kind("video")[0])
    await early.event(is_live("hana", True))

    late = await member("late")  # frames have been flowing: needs a fresh keyframe
    assert late.snapshot["live"] is True
    await late.send(t="subscribe")
    await late.accept_offer()
    frame = await decoded(late.of_kind("video")[0])
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert app.media.rooms["r1"].publications["hana"].keyframes.requests >= 2
    assert_forwarded_not_decoded(app)


async def test_host_leaving_ends_publication_and_tells_viewers(app: App, member) -> None:
    host = await member("hana", role="host")
    await host.publish()
    viewer = await member("vic")
    await viewer.send(t="subscribe")
    await viewer.accept_offer()
    for track in viewer.tracks:
        await decoded(track)

    await host.ws.close()  # the connection drops: no unpublish sent

    event = await viewer.event(is_live("hana", False))
    assert event["name"] == "hana"
    for track in viewer.tracks:
        await ended(track)
    assert "hana" not in app.media.rooms["r1"].publications
    newcomer = await member("newcomer")
    assert newcomer.snapshot["live"] is False and newcomer.snapshot["publishers"] == []


async def test_cohost_invited_and_viewers_receive_both(app: App, member) -> None:
    host = await member("hana", role="host")
    cora = await member("cora")  # a viewer token
    await cora.publish_offer(audio=False)
    assert await cora.error() == ErrorCode.MEDIA_FORBIDDEN
    cora.pcs.clear()

    await host.publish(audio=False)
    viewer = await member("vic")
    await viewer.send(t="subscribe")
    await viewer.accept_offer()

    await host.send(t="invite", uid="cora", cid="i1")
    ack = await host.next("invite_ack")
    assert ack == {**ack, "uid": "cora", "delivered": True, "cid": "i1"}
    invited = await cora.next("invited")
    assert invited["room"] == "r1" and invited["uid"] == "hana"
    await cora.publish(audio=False)

    offer = await viewer.accept_offer()  # renegotiated: both publishers now
    assert sorted(m["publisher_id"] for m in offer["tracks"].values()) == ["cora", "hana"]
    videos = viewer.of_kind("video")
    assert len(videos) == 2
    for track in videos:
        await decoded(track)
    await viewer.event(is_live("cora", True))
    joiner = await member("joiner")
    assert sorted(p["uid"] for p in joiner.snapshot["publishers"]) == ["cora", "hana"]

    third = await member("hank", role="host")  # media_max_publishers=2
    await third.publish_offer(audio=False)
    assert await third.error() == ErrorCode.MEDIA_TOO_MANY_PUBLISHERS
    await viewer.send(t="invite", uid="vic2")
    assert await viewer.error() == ErrorCode.MEDIA_FORBIDDEN  # only hosts invite
    assert_forwarded_not_decoded(app)


async def test_whip_publish_and_whep_play_round_trip(app: App, member) -> None:
    base = f"http://127.0.0.1:{app.http_port}"
    watcher = await member("watcher")
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: list[MediaStreamTrack] = []
    player.on("track", tracks.append)
    try:
        publisher.addTrack(PatternTrack(WIDTH, HEIGHT))
        publisher.addTrack(AudioStreamTrack())
        await publisher.setLocalDescription(await publisher.createOffer())
        offer = publisher.localDescription.sdp
        sdp_type = {"Content-Type": "application/sdp"}
        host_auth = {**sdp_type, "Authorization": f"Bearer {token('r1', 'obs', 'host')}"}
        viewer_auth = {**sdp_type, "Authorization": f"Bearer {token('r1', 'wendy')}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/whip/r1", data=offer, headers=sdp_type) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.post(f"{base}/whip/r1", data=offer, headers=viewer_auth) as resp:
                assert resp.status == 403 and (await resp.json())["code"] == ErrorCode.MEDIA_FORBIDDEN
            async with http.post(f"{base}/whip/r2", data=offer, headers=host_auth) as resp:
                assert resp.status == 403  # the token is for r1
            async with http.post(f"{base}/whip/r1", data=offer, headers=host_auth) as resp:
                assert resp.status == 201 and resp.content_type == "application/sdp"
                whip_location = resp.headers["Location"]
                answer = await resp.text()
            assert whip_location.startswith("/whip/r1/")
            await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await watcher.event(is_live("obs", True))  # WS viewers see the WHIP publisher go live

            player.addTransceiver("video", direction="recvonly")
            player.addTransceiver("audio", direction="recvonly")
            await player.setLocalDescription(await player.createOffer())
            async with http.post(
                f"{base}/whep/r1", data=player.localDescription.sdp, headers=viewer_auth
            ) as resp:
                assert resp.status == 201
                whep_location = resp.headers["Location"]
                await player.setRemoteDescription(RTCSessionDescription(sdp=await resp.text(), type="answer"))
            frame = await decoded(next(t for t in tracks if t.kind == "video"))
            assert (frame.width, frame.height) == (WIDTH, HEIGHT)
            assert isinstance(await decoded(next(t for t in tracks if t.kind == "audio")), av.AudioFrame)
            assert_forwarded_not_decoded(app)

            async with http.patch(base + whip_location, headers=host_auth) as resp:
                assert resp.status == 405  # no trickle ICE
            async with http.delete(base + whip_location, headers=viewer_auth) as resp:
                assert resp.status == 403  # not the publisher's session
            async with http.delete(base + whip_location, headers=host_auth) as resp:
                assert resp.status == 200
            await watcher.event(is_live("obs", False))
            for track in tracks:
                await ended(track)
            async with http.delete(base + whip_location, headers=host_auth) as resp:
                assert resp.status == 404
            async with http.delete(base + whep_location, headers=viewer_auth) as resp:
                assert resp.status == 200
        assert app.media.viewer_count == 0
    finally:
        await publisher.close()
        await player.close()


async def test_media_errors_have_codes(app: App, member) -> None:
    host = await member("hana", role="host")
    await host.send(t="publish", sdp="this is not an SDP offer")
    assert await host.error() in (ErrorCode.MEDIA_BAD_SDP, ErrorCode.MEDIA_NO_MEDIA)
    await host.send(
        t="publish", sdp="v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 RTP/AVP x\r\n"
    )
    assert await host.error() == ErrorCode.MEDIA_BAD_SDP
    await host.send(t="publish")
    assert await host.error() == ErrorCode.BAD_FIELD
    await host.send(t="publish", sdp="x" * 40_000)
    assert await host.error() in (ErrorCode.BAD_FRAME, ErrorCode.BAD_FIELD)

    data_only = host.new_pc()  # unknown track kind: an application (data channel) m-line
    data_only.createDataChannel("chat")
    await data_only.setLocalDescription(await data_only.createOffer())
    await host.send(t="publish", sdp=data_only.localDescription.sdp)
    assert await host.error() == ErrorCode.MEDIA_UNSUPPORTED

    two_videos = host.new_pc()
    two_videos.addTrack(PatternTrack(WIDTH, HEIGHT))
    two_videos.addTrack(PatternTrack(WIDTH, HEIGHT))
    await two_videos.setLocalDescription(await two_videos.createOffer())
    await host.send(t="publish", sdp=two_videos.localDescription.sdp)
    assert await host.error() == ErrorCode.MEDIA_TOO_MANY_TRACKS

    await host.send(t="answer", sdp="v=0")
    assert await host.error() == ErrorCode.MEDIA_BAD_STATE  # nothing was offered
    await host.send(t="unpublish")
    assert await host.error() == ErrorCode.MEDIA_BAD_STATE

    viewers = [await member(f"v{i}") for i in range(5)]  # media_max_viewers=4 on this node
    for viewer in viewers[:4]:
        await viewer.send(t="subscribe")
        assert (await viewer.next("subscribed"))["live"] is False
    await viewers[4].send(t="subscribe", cid="over")
    err = await viewers[4].next("error")
    assert err["code"] == ErrorCode.MEDIA_TOO_MANY_VIEWERS and err["ref"] == "over" and err["msg"]
    await viewers[0].send(t="subscribe")
    assert await viewers[0].error() == ErrorCode.MEDIA_BAD_STATE  # already subscribed
    await viewers[0].send(t="unsubscribe")
    await viewers[4].send(t="subscribe")
    assert (await viewers[4].next("subscribed"))["live"] is False  # a slot was freed
    # nothing above disturbed the room
    await host.send(t="danmaku", text="still fine")
    await viewers[4].event(lambda e: e["t"] == "danmaku" and e["text"] == "still fine")


async def test_claim_renewal_announces_a_live_publisher_once(app: App, member) -> None:
    """The claim renewal re-announces a publisher the room's view lost (a reaper's `live` off while
    we still publish), never one whose own `live` on is still on its way to the view: a renewal
    that fell between the two (a loaded machine, issue #21) made the room see the host go live
    twice (the host console's chat said so twice; fans would be told twice)."""
    renewals: list[asyncio.Future[None]] = []

    def renew_at_once(room_id: str, event: str, who: Any) -> None:
        # called right after the `live` on went into the room's outbox: this renewal runs before
        # any tick takes it to the broker (the in-process claim does not wait)
        if event == "published":
            renewals.append(asyncio.ensure_future(app.media.claims_once()))

    app.media.on_publishing(renew_at_once)
    host = await member("hana", role="host")
    await host.publish(audio=False)
    await host.event(is_live("hana", True))
    await asyncio.gather(*renewals)
    assert renewals
    await host.send(t="danmaku", text="after the renewal")  # sequenced after anything it queued
    await host.event(lambda e: e["t"] == "danmaku" and e["text"] == "after the renewal")
    assert [(e["uid"], e["on"]) for e in host.events if e["t"] == "live"] == [("hana", True)]

    # a reaper that took the room for dead announces the publisher gone (what Failover._reap
    # queues): the next renewal puts it back, once
    view = app.hub.rooms["r1"]
    who = app.media.site.identities[("r1", "hana")]
    assert app.hub.set_live("r1", who, False, "test-node", None, 0)
    await host.event(is_live("hana", False))
    assert "hana" not in view.publishers
    await app.media.claims_once()
    await app.media.claims_once()  # the announcement is on its way: not a second one
    await host.send(t="danmaku", text="after the reaper")
    await host.event(lambda e: e["t"] == "danmaku" and e["text"] == "after the reaper")
    assert [(e["uid"], e["on"]) for e in host.events if e["t"] == "live"] == [
        ("hana", True),
        ("hana", False),
        ("hana", True),
    ]
    assert view.publishers == {"hana": "hana"}
