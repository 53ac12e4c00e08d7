"""RTMP ingest end to end: FFmpeg's RTMP client (PyAV, its own process) pushes a test pattern to
a real node running nginx-rtmp; real aiortc viewers decode it (no mocks).

A publish key (POST /rtmp/<room>/key) or a host token as the stream key puts the host live like
a WHIP host (`live` event, H.264 room); a WHEP viewer and a WebSocket viewer decode the pattern's
frames and audio (AAC -> Opus once); the SFU forwards H.264 as is; a bad, expired, replayed or
banned key is refused by nginx on the node's answer (the code counted) and nothing goes live; a
ban ends the stream. Every wait is on an event or a decoded frame with a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import av
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from prometheus_client import REGISTRY

from server.app import App
from server.broker.base import Sanction
from server.config import Config
from server.deadline import within
from server.edge.rtmp import MAX_KEY
from server.media.codecs import H264, answered_video_codec
from server.wire import publish_key
from server.wire.protocol import ErrorCode, ProtocolError
from tests.conftest import token
from tests.media.encoders import Encoder, rtmp_encoder, rtmp_key_encoder
from tests.test_media_h264 import auth, whep_offer
from tests.test_media_signaling import (  # noqa: F401 - fixtures
    assert_forwarded_not_decoded,
    decoded,
    is_live,
    loopback,
    member,
)

TIMEOUT = 30.0
WIDTH, HEIGHT = 320, 240


@pytest.fixture
def config() -> Config:
    return Config(
        port=0,
        http_port=0,
        rtmp_port=0,
        tick_ms=20,
        node_id="test-node",
        join_timeout=5.0,
        media_stats_interval=0,
        rate_limits="off",
        repeat_max=0,
        max_loop_lag=0,
    )


@pytest.fixture
async def encoders() -> AsyncIterator[list[Encoder]]:
    started: list[Encoder] = []
    yield started
    for encoder in started:
        encoder.stop()


async def watch(app: App, room: str, tracks: list[MediaStreamTrack], http: aiohttp.ClientSession) -> Any:
    player = await whep_offer(None, tracks)
    url = f"http://127.0.0.1:{app.http_port}/whep/{room}"
    async with http.post(url, data=player.localDescription.sdp, headers=auth(room, "wendy")) as resp:
        assert resp.status == 201, await resp.text()
        answer = await resp.text()
    codec = answered_video_codec(answer)
    assert codec is not None and codec.name == H264
    await player.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return player


async def whep_viewer_decodes(app: App, audio: bool = False) -> None:
    """A WHEP viewer of r1 decodes a frame of the encoder's size (and, `audio`, its sound)."""
    tracks: list[MediaStreamTrack] = []
    async with aiohttp.ClientSession() as http:
        player = await watch(app, "r1", tracks, http)
        try:
            frame = await decoded(next(t for t in tracks if t.kind == "video"))
            assert (frame.width, frame.height) == (WIDTH, HEIGHT)
            if audio:
                sound = await decoded(next(t for t in tracks if t.kind == "audio"))
                assert isinstance(sound, av.AudioFrame)  # AAC in, Opus out, decoded by the viewer
        finally:
            await player.close()


async def test_rtmp_host_goes_live_and_viewers_decode(app: App, member, encoders) -> None:  # noqa: F811
    watcher = await member("watcher")
    encoder = rtmp_encoder(app.rtmp_port, "r1", token("r1", "studio", "host"), width=WIDTH, height=HEIGHT)
    encoders.append(encoder.start())
    await encoder.sending(TIMEOUT)
    live = await watcher.event(is_live("studio", True))
    assert live["codec"] == H264  # the room forwards the encoder's H.264
    assert app.media.rooms["r1"].video_codec == H264

    await whep_viewer_decodes(app, audio=True)

    # a WebSocket viewer too: the server's offer carries H.264, the client decodes
    viewer = await member("vera")
    await viewer.send(t="subscribe", cid="s")
    offer = await viewer.accept_offer()
    assert "H264/90000" in offer["sdp"] and "VP8/90000" not in offer["sdp"]
    await decoded(next(t for t in viewer.tracks if t.kind == "video"))
    assert_forwarded_not_decoded(app)

    # the encoder stops: the host goes off like a WHIP host that hangs up
    encoder.stop()
    await watcher.event(is_live("studio", False))


async def test_rtmp_bad_key_is_refused(app: App, member, encoders) -> None:  # noqa: F811
    watcher = await member("watcher")
    forged = token("r1", "mallory", "host").rsplit(".", 1)[0] + ".forged-signature"
    viewer_key = token("r1", "bob", "viewer")  # a viewer's token may not publish
    for key in (forged, viewer_key):
        encoder = rtmp_encoder(app.rtmp_port, "r1", key, width=WIDTH, height=HEIGHT)
        encoders.append(encoder.start())
        with pytest.raises(RuntimeError, match="encoder failed"):  # nginx drops it on our 4xx
            await encoder.sending(TIMEOUT)
    assert not app.rtmp.sessions and "r1" not in app.media.rooms
    # the refusals were counted like any door's, and nobody went live
    assert not [e for e in watcher.events if e["t"] == "live"]


async def test_rtmp_ban_ends_the_stream(app: App, member, encoders) -> None:  # noqa: F811
    watcher = await member("watcher")
    encoder = rtmp_encoder(app.rtmp_port, "r1", token("r1", "studio", "host"), width=WIDTH, height=HEIGHT)
    encoders.append(encoder.start())
    await encoder.sending(TIMEOUT)
    await watcher.event(is_live("studio", True))
    await app.broker.put_sanction(Sanction("r1", "studio", "ban", None, "test", False))
    await watcher.event(is_live("studio", False))
    # nginx's next on_update is answered 403: it drops the encoder, whose process then ends
    assert encoder.proc is not None
    assert await within(asyncio.to_thread(encoder.proc.wait), TIMEOUT) is not None
    # and a new publish with the banned user's token is refused at the door
    again = rtmp_encoder(app.rtmp_port, "r1", token("r1", "studio", "host"), width=WIDTH, height=HEIGHT)
    encoders.append(again.start())
    with pytest.raises(RuntimeError, match="encoder failed"):
        await again.sending(TIMEOUT)


async def test_a_key_nginx_cut_is_refused_with_the_limit_named(app: App) -> None:
    """nginx-rtmp keeps 255 bytes of `<name>?<args>` (measured: `r1?token=` + 246 bytes): a key it
    cut is refused 4101 with the limit named, not as a bare bad signature."""
    assert app.rtmp is not None
    long_key = token("r1", "studio", "host", name="S" * 60)[:246]  # as nginx-rtmp passes it on
    url = f"http://127.0.0.1:{app.rtmp.callback_port}/on_publish"
    async with aiohttp.ClientSession() as http:
        form = {"call": "publish", "name": "r1", "token": long_key, "addr": "127.0.0.1"}
        async with http.post(url, data=form) as resp:
            assert resp.status == 401
            body = await resp.json()
    assert body["code"] == ErrorCode.TOKEN_INVALID and "limit of 255 bytes" in body["msg"]


# -- publish keys (POST /rtmp/<room>/key): short stream keys, through the real RTMP path ---------


async def get_key(app: App, room: str, bearer: str, query: str = "") -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{app.http_port}/rtmp/{room}/key{query}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, headers={"Authorization": f"Bearer {bearer}"}) as resp,
    ):
        return resp.status, await resp.json()


def refusals(code: ErrorCode) -> float:
    return REGISTRY.get_sample_value("liveroom_rtmp_refusals_total", {"code": code.name}) or 0.0


async def refused_at_rtmp(app: App, key: str, code: ErrorCode, encoders: list[Encoder]) -> None:
    """FFmpeg pushes with `key`: nginx drops it on the node's refusal, counted under `code`."""
    before = refusals(code)
    encoder = rtmp_key_encoder(app.rtmp_port, key, width=WIDTH, height=HEIGHT)
    encoders.append(encoder.start())
    with pytest.raises(RuntimeError, match="encoder failed"):
        await encoder.sending(TIMEOUT)
    assert refusals(code) > before, code


async def test_publish_key_goes_live_where_the_token_is_too_long(app: App, member, encoders) -> None:  # noqa: F811
    """A host whose name makes its token longer than nginx-rtmp's 255 bytes gets a short key,
    goes live with it over FFmpeg's RTMP client, and a viewer decodes; with --join-nonce the
    same key cannot start a second stream."""
    app.guard.config.join_nonce = True  # members above joined without; the key's nonce is claimed
    watcher = await member("watcher")
    name = "直播间主播" * 6  # 30 CJK characters: 6 bytes each once JSON-escaped in the JWT
    host_token = token("r1", "studio", "host", name=name)
    assert len(host_token) > MAX_KEY  # as a stream key it would be cut
    status, body = await get_key(app, "r1", host_token)
    assert status == 200, body
    key = body["stream_key"]
    assert len(key) < 100 and body["server"] == f"rtmp://127.0.0.1:{app.rtmp_port}/live"
    assert body["url"] == f"{body['server']}/{key}" and body["expires"] > time.time() + 23 * 3600

    encoder = rtmp_key_encoder(app.rtmp_port, key, width=WIDTH, height=HEIGHT)
    encoders.append(encoder.start())
    await encoder.sending(TIMEOUT)
    live = await watcher.event(is_live("studio", True))
    assert live["codec"] == H264 and live["name"] == name[:8]  # the name, cut to 24 UTF-8 bytes
    await whep_viewer_decodes(app)
    encoder.stop()
    await watcher.event(is_live("studio", False))
    await refused_at_rtmp(app, key, ErrorCode.TOKEN_REPLAYED, encoders)  # its nonce was used


async def test_publish_key_refusals(app: App, member, encoders) -> None:  # noqa: F811
    """Bad, expired and banned keys are refused at the RTMP door (nginx drops the encoder; the
    code is counted); the endpoint refuses viewers, bad lifetimes and banned hosts."""
    watcher = await member("watcher")
    status, body = await get_key(app, "r1", token("r1", "studio", "host"))
    assert status == 200
    key = body["stream_key"]
    tampered = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    await refused_at_rtmp(app, tampered, ErrorCode.TOKEN_INVALID, encoders)
    secret = app.guard.keyring.signing[1]
    expired = publish_key.mint(secret, room="r1", uid="studio", name="Studio", exp=int(time.time()) - 60)
    await refused_at_rtmp(app, expired, ErrorCode.TOKEN_EXPIRED, encoders)
    forged = publish_key.mint("not-the-secret", room="r1", uid="studio", name="", exp=int(time.time()) + 600)
    await refused_at_rtmp(app, forged, ErrorCode.TOKEN_INVALID, encoders)

    # the endpoint: a viewer gets no key, nor a lifetime out of range
    status, body = await get_key(app, "r1", token("r1", "bob", "viewer"))
    assert (status, body["code"]) == (403, ErrorCode.MEDIA_FORBIDDEN)
    for ttl in ("10", "999999999", "1e3", "-5"):
        status, body = await get_key(app, "r1", token("r1", "studio", "host"), f"?ttl={ttl}")
        assert (status, body["code"]) == (400, ErrorCode.BAD_FIELD), ttl
    status, body = await get_key(app, "r1", token("r1", "studio", "host"), "?ttl=120")
    assert status == 200 and body["expires"] <= time.time() + 121

    # banned: the key got before the ban is refused at the RTMP door, and no new key is given
    await app.broker.put_sanction(Sanction("r1", "studio", "ban", None, "test", False))
    await refused_at_rtmp(app, key, ErrorCode.BANNED, encoders)
    status, body = await get_key(app, "r1", token("r1", "studio", "host"))
    assert (status, body["code"]) == (403, ErrorCode.BANNED)
    assert not app.rtmp.sessions and "r1" not in app.media.rooms
    assert not [e for e in watcher.events if e["t"] == "live"]


def test_publish_key_format() -> None:
    """Pure: bound to room, host and expiry; short; the name cut at a character boundary."""
    exp = int(time.time()) + 3600
    key = publish_key.mint("s", room="r1", uid="u1", name="Ann", exp=exp)
    grant = publish_key.verify(["other", "s"], key, time.time())  # a rotated secret still verifies
    assert (grant.room, grant.uid, grant.name, grant.exp) == ("r1", "u1", "Ann", exp)
    assert publish_key.looks_like_key(key) and not publish_key.looks_like_key(token("r1", "u1", "host"))
    longest = publish_key.mint("s", room="r" * 64, uid="u" * 64, name="名" * 32, exp=exp)
    assert len(longest) <= publish_key.MAX_LEN < MAX_KEY
    assert publish_key.verify(["s"], longest, time.time()).name == "名" * 8
    room, uid, name, exp_text, *rest = key.split("~")
    respelled = "~".join([room, uid, name, "0" + exp_text, *rest])  # the same expiry, spelled otherwise
    for changed in (
        "~".join(["r2", uid, name, exp_text, *rest]),
        "~".join([room, "u2", name, exp_text, *rest]),
        respelled,
        key + "x",
        "a~b",
    ):
        with pytest.raises(ProtocolError) as info:
            publish_key.verify(["s"], changed, time.time())
        assert info.value.code == ErrorCode.TOKEN_INVALID
    with pytest.raises(ProtocolError) as info:
        publish_key.verify(["s"], key, exp + 1)
    assert info.value.code == ErrorCode.TOKEN_EXPIRED
