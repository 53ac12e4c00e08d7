"""Cascading media across nodes: three in-process nodes sharing a real redis-server.

The host publishes on node A (the origin); viewers on nodes B and C (edges) subscribe on the
node they are connected to. Each edge pulls the stream from A over WHEP with a node
credential, taps it like a publisher's and forwards it to its own viewers: A carries one
stream per edge whatever the edges' audiences. Real aiortc peers on 127.0.0.1; every wait
is on a frame, an event or a decoded frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from server.app import App
from server.config import Config
from server.deadline import within
from server.media import COUNTERS
from server.wire import auth
from server.wire.protocol import ErrorCode
from tests.conftest import SECRET, token
from tests.media.pattern import PatternTrack
from tests.redis_fixtures import RedisServer, apoll, requires_redis
from tests.test_media_signaling import TIMEOUT, Conn, decoded, ended, is_live, join, loopback  # noqa: F401

pytestmark = requires_redis


@pytest.fixture
def redis_url(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[dict[str, App]]:
    apps: dict[str, App] = {}
    for name in ("a", "b", "c"):
        config = Config(
            port=0,
            http_port=0,
            tick_ms=20,
            node_id=name,
            redis_url=redis_url,
            presence_ttl=2.0,
            join_timeout=5.0,
            media_max_viewers=6,
            media_stats_interval=0,
        )
        apps[name] = App(config)
        await apps[name].start()
    try:
        yield apps
    finally:
        for app in apps.values():
            await app.stop()


@pytest.fixture
async def member(nodes: dict[str, App]) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Conn] = []

    async def _member(node: str, user: str, role: str = "viewer", room: str = "r1") -> Conn:
        conn = await join(nodes[node].port, user, role, room)
        opened.append(conn)
        return conn

    yield _member
    for conn in opened:
        await conn.close()


def streams_to_nodes(origin: App, room: str = "r1") -> list[str]:
    """Viewer ids on the origin that are edge nodes' relays."""
    media_room = origin.node.media.rooms.get(room)
    return sorted(v for v in media_room.subscriptions if v.startswith("node.")) if media_room else []


async def test_late_viewer_on_an_edge_starts_from_the_edges_gop_cache(nodes: dict[str, App], member) -> None:
    """A host that never sends a second keyframe: a late viewer on an edge still decodes, from the
    edge's keyframe cache, with no keyframe request reaching the host."""
    a, b = nodes["a"], nodes["b"]
    for app in nodes.values():  # caches that hold the whole test (30 s at 30 fps): never refreshed
        config = app.node.media.media_config
        config.gop_cache_frames, config.video_queue_frames, config.gop_cache_bytes = 900, 1400, 1 << 30
    host = await member("a", "hana", role="host")
    pc = await host.publish(audio=False)
    for sender in pc.getSenders():  # a long keyframe interval (aiortc: 3000 frames), and PLIs ignored
        sender._send_keyframe = lambda: None  # type: ignore[method-assign]
    await host.event(is_live("hana", True))
    early = await member("b", "early")
    await early.send(t="subscribe")
    await early.accept_offer()
    await decoded(early.of_kind("video")[0])
    origin = a.node.media.rooms["r1"].publications["hana"].fanouts["video"]
    edge = b.node.media.rooms["r1"].publications["hana"].fanouts["video"]
    keyframes = origin.stats.keyframes_in
    assert edge.gop is not None and edge.gop.warm

    late = await member("b", "late")
    await late.send(t="subscribe")
    await late.accept_offer()
    frame = await decoded(late.of_kind("video")[0])

    assert frame.width > 0
    assert origin.stats.keyframes_in == keyframes  # the host sent no keyframe for it
    assert edge.gop.replays >= 1 and edge.gop.overflows == 0  # the late viewer started from the cache
    assert len(streams_to_nodes(a)) == 1  # still one stream from the origin to edge b


async def test_three_nodes_origin_carries_one_stream_per_edge(nodes: dict[str, App], member) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    decoded_before = COUNTERS["frames_to_decoder"]
    host = await member("a", "hana", role="host")
    await host.publish()
    await host.event(is_live("hana", True))

    viewers = [await member("b", "vb1"), await member("b", "vb2"), await member("c", "vc1")]
    for viewer in viewers:
        assert viewer.snapshot["live"] and viewer.snapshot["media_node"] == "a"
        await viewer.send(t="subscribe", cid=1)
        offer = await viewer.accept_offer()
        assert sorted(m["kind"] for m in offer["tracks"].values()) == ["audio", "video"]
        assert {m["publisher_id"] for m in offer["tracks"].values()} == {"hana"}
    for viewer in viewers:
        frame = await decoded(viewer.of_kind("video")[0])
        assert frame.width > 0
        await decoded(viewer.of_kind("audio")[0])

    # three viewers on two edges: the origin carries exactly two streams, one per edge
    assert [v.split("#")[0] for v in streams_to_nodes(a)] == ["node.b", "node.c"]
    assert len(a.node.media.rooms["r1"].subscriptions) == 2
    for edge, count in ((b, 2), (c, 1)):
        relay = edge.node.media.relays["r1"]["hana"]
        assert relay.origin_node == "a"
        pub = edge.node.media.rooms["r1"].publications["hana"]
        assert pub.taps["video"].frames_tapped > 0 and pub.taps["video"].frames_to_decoder == 0
        assert len(edge.node.media.rooms["r1"].subscriptions) == count
    assert COUNTERS["frames_to_decoder"] == decoded_before  # no node decoded anything

    # a late viewer on an edge decodes: its keyframe request went edge -> origin -> publisher
    # (edge c's GOP cache off for it, else the viewer may start from the cache: tests/media)
    c.node.media.rooms["r1"].publications["hana"].fanouts["video"].gop = None
    origin_plis = a.node.media.rooms["r1"].publications["hana"].keyframes.sent
    late = await member("c", "vc2")
    await late.send(t="subscribe")
    await late.accept_offer()
    await decoded(late.of_kind("video")[0])
    assert c.node.media.rooms["r1"].publications["hana"].keyframes.sent > 0
    assert a.node.media.rooms["r1"].publications["hana"].keyframes.sent > origin_plis
    assert len(streams_to_nodes(a)) == 2

    # the last viewer leaving an edge stops its pull; the other edge keeps its stream
    await viewers[2].send(t="unsubscribe")
    await late.send(t="unsubscribe")
    await apoll(lambda: "r1" not in c.node.media.relays, what="edge c stops pulling")
    await apoll(lambda: len(streams_to_nodes(a)) == 1, what="origin drops edge c's stream")
    assert await decoded(viewers[0].of_kind("video")[0])

    # the publication ends: edge viewers' tracks end and the edge lets go of the origin
    await host.send(t="unpublish")
    await ended(viewers[0].of_kind("video")[0])
    await apoll(lambda: "r1" not in b.node.media.relays, what="edge b stops pulling")


async def test_cohost_cascades_to_edge_viewer(nodes: dict[str, App], member) -> None:
    host = await member("a", "hana", role="host")
    await host.publish()
    await host.event(is_live("hana", True))
    viewer = await member("b", "vb")
    assert viewer.snapshot["live"] and viewer.snapshot["media_node"] == "a"
    await viewer.send(t="subscribe")
    await viewer.accept_offer()
    await decoded(viewer.of_kind("video")[0])

    cohost = await member("a", "kai")
    await host.send(t="invite", uid="kai")
    await cohost.next("invited")
    await cohost.publish(audio=False)
    offer = await viewer.accept_offer()  # renegotiation on the same connection
    assert {m["publisher_id"] for m in offer["tracks"].values()} == {"hana", "kai"}
    await apoll(lambda: len(viewer.of_kind("video")) == 2, what="second video track")
    await decoded(viewer.of_kind("video")[1])
    assert sorted(nodes["b"].node.media.relays["r1"]) == ["hana", "kai"]


async def test_node_credential_is_required_and_not_mintable_by_clients(nodes: dict[str, App]) -> None:
    a = nodes["a"]
    url = f"http://127.0.0.1:{a.http_port}/whep/r1?publisher=hana"
    offer = "v=0\r\n"
    client_token = auth.mint(SECRET, room="r1", user="node.b", role="viewer")
    forged = auth.jwt.encode(
        {"sub": "b", "room": "r1", "role": "node", "aud": auth.NODE_AUDIENCE, "exp": 2**31}, SECRET
    )
    good = auth.mint_node(SECRET, room="r1", node="b")
    other_room = auth.mint_node(SECRET, room="r2", node="b")
    async with aiohttp.ClientSession() as http:

        async def post(tok: str, path: str = url) -> tuple[int, dict[str, Any]]:
            headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/sdp"}
            async with http.post(path, data=offer, headers=headers) as resp:
                return resp.status, (await resp.json() if resp.status >= 400 else {})

        status, body = await post(forged)  # signed with the client secret: refused
        assert status == 401 and body["code"] == ErrorCode.TOKEN_INVALID
        status, body = await post(other_room)
        assert status == 403 and body["code"] == ErrorCode.WRONG_ROOM
        status, body = await post(good, f"http://127.0.0.1:{a.http_port}/whip/r1")
        assert status == 403 and body["code"] == ErrorCode.MEDIA_FORBIDDEN
        # a valid node credential, but nothing published here: no relaying of relays
        status, body = await post(good, f"http://127.0.0.1:{a.http_port}/whep/r1?publisher=hana")
        assert status == 421 and body["code"] == ErrorCode.MEDIA_WRONG_NODE
        # a client token is an ordinary WHEP viewer: it never gets relay treatment
        assert not auth.is_node_token(client_token)


async def whep_play(http: aiohttp.ClientSession, url: str, user: str) -> tuple[RTCPeerConnection, list[Any]]:
    """A WHEP player offering recvonly video (and audio); returns its connection and tracks."""
    player = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: list[Any] = []
    player.on("track", tracks.append)
    player.addTransceiver("video", direction="recvonly")
    await player.setLocalDescription(await player.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token('r1', user)}"}
    async with http.post(url, data=player.localDescription.sdp, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        await player.setRemoteDescription(RTCSessionDescription(sdp=await resp.text(), type="answer"))
    return player, tracks


async def test_whep_viewer_adds_a_cohost_with_a_second_session(nodes: dict[str, App], member) -> None:
    """WHEP has no server-initiated renegotiation: a WHEP player that learns of a co-host (the
    room's `live` event) opens one more session for that publisher (`?publisher=`), leaving the
    first untouched. Here both sessions are on edge node B, which pulls both publishers from A."""
    host = await member("a", "hana", role="host")
    await host.publish(audio=False)
    await host.event(is_live("hana", True))
    watcher = await member("b", "wendy")
    base = f"http://127.0.0.1:{nodes['b'].http_port}/whep/r1"
    players: list[RTCPeerConnection] = []
    async with aiohttp.ClientSession() as http:
        try:
            first, first_tracks = await whep_play(http, f"{base}?publisher=hana", "wendy")
            players.append(first)
            await decoded(first_tracks[0])

            cohost = await member("a", "kai")
            await host.send(t="invite", uid="kai")
            await cohost.next("invited")
            await cohost.publish(audio=False)
            live = await watcher.event(is_live("kai", True))  # how the player learns of the co-host
            second, second_tracks = await whep_play(http, f"{base}?publisher={live['uid']}", "wendy")
            players.append(second)
            await decoded(second_tracks[0])
            await decoded(first_tracks[0])  # the first session never stopped
            subs = nodes["b"].node.media.rooms["r1"].subscriptions.values()
            assert sorted(
                t.publisher_id for s in subs for t in s.tracks if s.viewer_id.startswith("wendy")
            ) == [
                "hana",
                "kai",
            ]
        finally:
            for player in players:
                await player.close()


async def test_whep_viewer_arriving_while_the_edge_pulls_gets_the_track(
    nodes: dict[str, App], member, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay adds its publication on the edge before the origin has answered. A WHEP viewer
    of that publisher arriving in between must wait for the pull and get its track, not take
    the half-made publication for local media and get an answer with nothing in it. The
    origin's answer to the edge is held until the viewer's request has reached the edge."""
    a, b = nodes["a"], nodes["b"]
    host = await member("a", "hana", role="host")
    await host.publish(audio=False)
    await host.event(is_live("hana", True))
    watcher = await member("b", "wendy")
    base = f"http://127.0.0.1:{b.http_port}/whep/r1"
    players: list[RTCPeerConnection] = []
    async with aiohttp.ClientSession() as http:
        try:
            first, first_tracks = await whep_play(http, f"{base}?publisher=hana", "wendy")
            players.append(first)
            await decoded(first_tracks[0])  # the edge now pulls the room: it will pull a co-host too

            viewer_arrived = asyncio.Event()
            origin_whep, edge_whep = a.node.media.whep, b.node.media.whep

            async def held_origin(*args: Any, **kw: Any) -> Any:
                if kw.get("relay"):
                    await within(viewer_arrived.wait(), TIMEOUT)
                return await origin_whep(*args, **kw)

            async def edge(*args: Any, **kw: Any) -> Any:
                viewer_arrived.set()
                return await edge_whep(*args, **kw)

            monkeypatch.setattr(a.node.media, "whep", held_origin)
            monkeypatch.setattr(b.node.media, "whep", edge)
            cohost = await member("a", "kai")
            await host.send(t="invite", uid="kai")
            await cohost.next("invited")
            await cohost.publish(audio=False)
            await watcher.event(is_live("kai", True))
            await apoll(lambda: "kai" in b.node.media.rooms["r1"].publications, what="the edge pulling kai")
            second, second_tracks = await whep_play(http, f"{base}?publisher=kai", "wendy")
            players.append(second)
            assert second_tracks, "the answer carries kai's track"
            await decoded(second_tracks[0])
        finally:
            for player in players:
                await player.close()


async def test_full_origin_feeds_an_edge_through_another_edge(nodes: dict[str, App], member) -> None:
    """A tree: the origin serves one stream only, so the second edge pulls from the first edge,
    found in the relay registry (Redis), and its viewer decodes (keyframes c -> b -> a -> host)."""
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    a.node.media.max_viewers = 1  # the origin is full once one edge pulls from it
    host = await member("a", "hana", role="host")
    await host.publish(audio=False)
    await host.event(is_live("hana", True))
    vb = await member("b", "vb")
    await vb.send(t="subscribe")
    await vb.accept_offer()
    await decoded(vb.of_kind("video")[0])

    vc = await member("c", "vc")
    await vc.send(t="subscribe")
    await vc.accept_offer()
    frame = await decoded(vc.of_kind("video")[0])
    assert frame.width > 0
    assert c.node.media.relays["r1"]["hana"].via == "b"
    assert b.node.media.relays["r1"]["hana"].via is None
    assert [v.split("#")[0] for v in streams_to_nodes(a)] == ["node.b"]  # still one stream
    assert [v.split("#")[0] for v in streams_to_nodes(b)] == ["node.c"]
    assert await b.node.media.claims.edges("r1") == [("b", b.node.media.url)]


async def test_h264_room_cascades_as_h264(nodes: dict[str, App], member) -> None:
    """An H.264-only publisher on the origin: the edge's pull learns H.264 from the origin's answer
    and its viewers are offered H.264 (not transcoded) and decode it; a late joiner's snapshot
    says so on every node."""
    a, b = nodes["a"], nodes["b"]
    host = await member("a", "hana", role="host")
    pc = host.new_pc()
    video = pc.addTransceiver(PatternTrack(160, 120), direction="sendonly")
    video.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name in ("H264", "rtx")]
    )
    await pc.setLocalDescription(await pc.createOffer())
    await host.send(t="publish", sdp=pc.localDescription.sdp, cid="pub")
    answer = await host.next("answer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    assert (await host.event(is_live("hana", True)))["codec"] == "H264"

    viewer = await member("b", "vb1")
    assert viewer.snapshot["media_codec"] == "H264"
    await viewer.send(t="subscribe", cid=1)
    offer = await viewer.accept_offer()
    assert "H264/90000" in offer["sdp"] and "VP8/90000" not in offer["sdp"]
    await decoded(viewer.of_kind("video")[0])
    relayed = b.node.media.rooms["r1"].publications["hana"]
    assert relayed.video_codec is not None and relayed.video_codec.name == "H264"
    assert streams_to_nodes(a) and COUNTERS["frames_to_decoder"] == 0
