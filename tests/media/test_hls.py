"""LL-HLS from a live room: a real aiortc publisher (VP8 + Opus) on a real node, read over HTTP.

A standard HLS client (FFmpeg's hls demuxer through PyAV) decodes the picture; blocking
playlist reloads and the held preload-hint part are answered when the part exists; the URL
token is refused once forged, for another room, or after its viewer is banned. Every wait is
an event with a timeout; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import av
import msgpack
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from websockets.asyncio.client import ClientConnection, connect

from server.app import App
from server.broker.base import Sanction
from server.config import Config
from server.deadline import within
from server.media import loopback_candidates
from server.wire.protocol import ErrorCode
from tests.conftest import token
from tests.media.pattern import PatternTrack

TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def loopback() -> Any:
    with loopback_candidates():
        yield


@pytest.fixture
def config(config: Config) -> Config:
    return dataclasses.replace(config, media_stats_interval=0, join_timeout=5.0)


async def _frame(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = msgpack.unpackb(await ws.recv())
            if frame["t"] == kind:
                return frame


@asynccontextmanager
async def publishing(app: App, room: str = "r1") -> AsyncIterator[ClientConnection]:
    """The room's host publishing a moving test pattern and (silent) Opus over its WebSocket."""
    ws = await connect(f"ws://127.0.0.1:{app.port}/ws?token={token(room, 'hana', 'host')}")
    await _frame(ws, "snapshot")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(PatternTrack(160, 120))
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send(msgpack.packb({"t": "publish", "sdp": pc.localDescription.sdp, "cid": "p"}))
    answer = await _frame(ws, "answer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    try:
        yield ws
    finally:
        await pc.close()
        await ws.close()


@pytest.fixture
async def live(app: App) -> AsyncIterator[App]:
    """Room r1 with its host publishing a moving test pattern and (silent) Opus audio."""
    async with publishing(app):
        yield app


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def hls_url(app: App, http: aiohttp.ClientSession, user: str = "vera", room: str = "r1") -> str:
    headers = {"Authorization": f"Bearer {token(room, user, 'viewer')}"}
    async with http.get(f"{base(app)}/hls/{room}/token", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
    assert body["url"] == f"/hls/{room}/{body['hls_token']}/index.m3u8"
    return base(app) + body["url"]


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, allow_redirects=False) as response:
        return response.status, dict(response.headers), await response.read()


def preload_hint(playlist: str) -> str:
    match = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)"', playlist)
    assert match, playlist
    return match[1]


def decode(url: str, count: int = 30) -> tuple[list[str], int, int]:
    """A standard HLS client (FFmpeg's hls demuxer, no LL-HLS: it plays the complete segments
    listed with EXTINF): the stream's codecs, frames decoded (up to `count`), their width."""
    container = av.open(url, options={"rw_timeout": str(int(TIMEOUT * 1e6))}, timeout=TIMEOUT)
    try:
        codecs = sorted(s.codec_context.name for s in container.streams if s.type in ("audio", "video"))
        frames = 0
        width = 0
        for frame in container.decode(video=0):
            frames += 1
            width = frame.width
            if frames >= count:
                break
        return codecs, frames, width
    finally:
        container.close()


async def test_standard_hls_client_decodes_the_live_room(live: App, http: aiohttp.ClientSession) -> None:
    url = await hls_url(live, http)
    status, headers, body = await get(http, url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    assert headers["Cache-Control"] == "public, max-age=1"
    assert headers["Access-Control-Allow-Origin"] == "*"
    text = body.decode()
    for tag in ("#EXT-X-VERSION:9", "#EXT-X-PART-INF:", "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"):
        assert tag in text

    codecs, frames, width = await within(asyncio.to_thread(decode, url), TIMEOUT * 2)
    assert codecs == ["aac", "h264"]  # VP8 transcoded once for the room, Opus -> AAC
    assert frames == 30 and width == 160
    (stream,) = live.hls.streams.values()
    assert stream.stats()["transcode"] is True


async def test_blocking_reload_and_preload_hint_are_answered_when_the_part_exists(
    live: App, http: aiohttp.ClientSession
) -> None:
    url = await hls_url(live, http)
    status, _, body = await get(http, url)
    assert status == 200
    hint = preload_hint(body.decode())  # "<stream id>/p<M>.<P>.m4s": not written yet
    sid, name = hint.split("/")
    msn, part = map(int, re.fullmatch(r"p(\d+)\.(\d+)\.m4s", name).groups())  # type: ignore[union-attr]
    stream = live.hls.streams["r1"]
    assert hint.split("/")[1] not in stream.files
    # both requests are held by the node until the part exists, then answered
    reload_task = asyncio.create_task(get(http, f"{url}?_HLS_msn={msn}&_HLS_part={part}"))
    part_task = asyncio.create_task(get(http, url.rsplit("/", 1)[0] + "/" + hint))
    status, headers, body = await reload_task
    assert status == 200, body
    assert headers["Cache-Control"] == "public, max-age=3"
    assert f'URI="{hint}"' in body.decode()  # the part is listed now
    status, headers, data = await part_task
    assert status == 200, data
    assert headers["Content-Type"] == "video/mp4"
    assert headers["Cache-Control"] == "public, max-age=86400, immutable"
    assert data[4:8] == b"moof" and data == stream.files[name]
    status, _, init = await get(http, url.rsplit("/", 1)[0] + f"/{sid}/init.mp4")
    assert status == 200 and init[4:8] == b"ftyp"
    # too far ahead: refused at once (RFC 8216bis: more than two segments past the edge)
    status, _, body = await get(http, f"{url}?_HLS_msn={msn + 10}&_HLS_part=0")
    assert status == 400 and b"BAD_FIELD" in body
    # another stream id (a restarted stream) is 404, not another stream's bytes
    status, _, body = await get(http, url.rsplit("/", 1)[0] + "/00000000/init.mp4")
    assert status == 404


async def test_url_token_refused_when_forged_for_another_room_or_banned(
    live: App, http: aiohttp.ClientSession
) -> None:
    url = await hls_url(live, http, user="mallory")
    status, _, _ = await get(http, url)
    assert status == 200
    tok = url.split("/")[-2]
    forged = tok[:-2] + ("AA" if not tok.endswith("AA") else "BB")
    status, headers, body = await get(http, url.replace(tok, forged))
    assert status == 401 and f'"code": {int(ErrorCode.TOKEN_INVALID)}' in body.decode()
    assert "max-age" not in headers.get("Cache-Control", "")
    status, _, body = await get(http, url.replace("/hls/r1/", "/hls/r2/"))
    assert status == 401 and b"TOKEN_INVALID" in body
    await live.broker.put_sanction(Sanction("r1", "mallory", "ban", None, "test", False))
    status, _, body = await get(http, url)
    assert status == 403 and b"BANNED" in body
    # and the door refuses them a new URL token
    headers = {"Authorization": f"Bearer {token('r1', 'mallory', 'viewer')}"}
    status, _, body = await get_with(http, f"{base(live)}/hls/r1/token", headers)
    assert status == 403 and b"BANNED" in body
    # another viewer still plays
    status, _, _ = await get(http, await hls_url(live, http, user="vera"))
    assert status == 200


async def get_with(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    async with http.get(url, headers=headers) as response:
        return response.status, response.headers, await response.read()


async def test_nothing_live_is_a_clear_refusal(app: App, http: aiohttp.ClientSession) -> None:
    url = await hls_url(app, http)
    status, _, body = await get(http, url)
    assert status == 409 and b"MEDIA_NO_MEDIA" in body
