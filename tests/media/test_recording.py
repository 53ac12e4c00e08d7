"""Recording and replay (#27): a real aiortc host (VP8 + Opus) publishes into a node started with
`--record`; the recording is read back over HTTP by a standard HLS client (FFmpeg's hls
demuxer through PyAV), with its danmaku, listed by the admin API and announced once by a
signed `recording.ready` webhook; the replay URL refuses a forged, an expired and a banned
viewer's token; a shutdown while live still finishes the recording and sends its webhook.
Every wait is an event (or a condition) with a timeout; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import msgpack
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection

from server.app import App
from server.broker.base import Sanction
from server.config import Config
from server.deadline import within
from server.media import loopback_candidates
from server.media.hls.archive import Archive
from server.media.hls.playlist import VodSegment, render_vod
from server.media.hls.recording import (
    DanmakuLog,
    RecordConfig,
    room_dir_name,
    valid_recording_id,
)
from server.wire.auth import Identity
from tests.local_http import serving
from tests.media.test_hls import TIMEOUT, base, get, hls_url, publishing
from tests.redis_fixtures import apoll
from tests.test_webhooks import SECRET, Receiver

ADMIN = "admin-token-for-the-recording-test"


@pytest.fixture(autouse=True)
def loopback() -> Any:
    with loopback_candidates():
        yield


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rx = Receiver(fail=0)
    hook = web.Application()
    hook.router.add_post("/hook", rx.handle)
    async with serving(hook) as base:
        yield rx, f"{base}/hook"


@pytest.fixture
def config(config: Config, tmp_path: Path, receiver: tuple[Receiver, str]) -> Config:
    return dataclasses.replace(
        config,
        media_stats_interval=0,
        join_timeout=5.0,
        record=str(tmp_path / "rec"),
        webhook_url=receiver[1],
        webhook_secret=SECRET,
        admin_token=ADMIN,
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


async def _event(ws: ClientConnection, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = msgpack.unpackb(await ws.recv())
            for event in frame.get("events", []) if frame["t"] == "batch" else []:
                if match(event):
                    return event


async def segments_written(app: App, room: str, count: int) -> None:
    """Until the room's recording has `count` segments on disk (each write wakes its event)."""
    await apoll(lambda: room in app.archive.active, TIMEOUT, "the recording to start")  # type: ignore[union-attr]
    recording = app.archive.active[room]  # type: ignore[union-attr]
    async with asyncio.timeout(TIMEOUT * 2):
        while len(recording.written) < count:
            await recording.changed.wait()


def decode_all(url: str) -> tuple[list[str], int, float]:
    """A standard HLS client reads the whole VOD: codecs, video frames, last frame's time."""
    container = av.open(url, options={"rw_timeout": str(int(TIMEOUT * 1e6))}, timeout=TIMEOUT)
    try:
        codecs = sorted(s.codec_context.name for s in container.streams if s.type in ("audio", "video"))
        frames, last = 0, 0.0
        for frame in container.decode(video=0):
            frames += 1
            last = float(frame.time or 0.0)
        return codecs, frames, last
    finally:
        container.close()


async def test_a_live_room_is_recorded_and_replays_with_its_danmaku(
    app: App,
    http: aiohttp.ClientSession,
    join: Callable[..., Awaitable[Any]],
    receiver: tuple[Receiver, str],
) -> None:
    rx, _ = receiver
    async with publishing(app) as host:
        await segments_written(app, "r1", 1)  # recording from the host's first segment on
        viewer = await join("vera", "r1")
        await viewer.send(t="danmaku", text="remember this moment", cid="d1")
        await viewer.send(t="danmaku", text="this one is removed", cid="d2")
        kept, removed = await viewer.events(lambda e: e["t"] == "danmaku", 2)
        await host.send(msgpack.packb({"t": "mod", "action": "delete", "seq": removed["seq"], "cid": "m"}))
        await _event(host, lambda e: e["t"] == "delete" and e.get("target") == removed["seq"])
        recording = app.archive.active["r1"]  # type: ignore[union-attr]
        await segments_written(app, "r1", len(recording.written) + 2)  # the moments are inside
        listed = await admin_recordings(app, http)
        assert listed[0]["state"] == "recording" and listed[0]["id"] == recording.id
        await host.send(msgpack.packb({"t": "unpublish", "cid": "u"}))  # the host stops: the recording ends
        await rx.wait(lambda: any(e["type"] == "recording.ready" for e in rx.accepted))

    (event,) = [e for e in rx.accepted if e["type"] == "recording.ready"]
    meta = event["data"]
    assert event["id"] == f"recording.ready:r1:{meta['id']}"  # the same id on every retry
    assert valid_recording_id(meta["id"]) and meta["id"] == recording.id
    assert meta["room"] == "r1" and meta["publisher"] == "hana" and meta["segments"] >= 3
    assert meta["start"] <= kept["ts"] / 1000 <= meta["end"] and meta["duration"] > 0
    assert meta["danmaku"] == 1 and meta["truncated"] is False
    folder = Path(app.config.record) / "r1" / meta["id"]
    assert meta["size"] == sum(f.stat().st_size for f in folder.iterdir() if f.name != "recording.json")

    # the VOD playlist, as the replay URL serves it
    live_url = await hls_url(app, http)
    tok = live_url.split("/")[-2]
    replay = f"{base(app)}/replay/r1/{tok}/{meta['id']}"
    status, headers, body = await get(http, f"{replay}/index.m3u8")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    assert headers["Cache-Control"] == "public, max-age=86400"
    text = body.decode()
    for tag in ("#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-ENDLIST", '#EXT-X-MAP:URI="init.mp4"'):
        assert tag in text
    assert text.count("#EXT-X-PROGRAM-DATE-TIME:") == text.count("#EXTINF:") == meta["segments"]
    assert "#EXT-X-PART" not in text and "PRELOAD-HINT" not in text
    first = next(line for line in text.splitlines() if line.endswith(".m4s"))
    status, headers, data = await get(http, f"{replay}/{first}")
    assert status == 200 and data[4:8] == b"moof"
    assert headers["Content-Type"] == "video/mp4"
    assert headers["Cache-Control"] == "public, max-age=86400, immutable"

    # a standard HLS client plays the whole recording
    codecs, frames, last = await within(asyncio.to_thread(decode_all, f"{replay}/index.m3u8"), TIMEOUT * 2)
    assert codecs == ["aac", "h264"]
    assert frames >= 30 and last > 0

    # the danmaku, at their moments; the removed one is not replayed
    status, headers, body = await get(http, f"{replay}/danmaku.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    recorded = json.loads(body)["danmaku"]
    assert [(d["text"], d["ts"], d["seq"]) for d in recorded] == [(kept["text"], kept["ts"], kept["seq"])]

    # the admin API lists it
    (listed_meta,) = await admin_recordings(app, http)
    assert listed_meta == {**meta, "state": "ready"}
    assert len([e for e in rx.accepted if e["type"] == "recording.ready"]) == 1  # once

    # the replay has the room's access rules: a forged, an expired, a banned viewer's token
    status, _, body = await get(
        http, f"{replay}/index.m3u8".replace(tok, tok[:-2] + ("AA" if not tok.endswith("AA") else "BB"))
    )
    assert status == 401 and b"TOKEN_INVALID" in body
    expired, _ = app.guard.mint_hls(Identity(uid="vera", name="vera", room="r1", role="viewer"), ttl=-60)
    status, _, body = await get(http, f"{replay}/index.m3u8".replace(tok, expired))
    assert status == 401 and b"TOKEN_EXPIRED" in body
    status, _, body = await get(http, f"{replay}/index.m3u8".replace("/replay/r1/", "/replay/r2/"))
    assert status == 401 and b"TOKEN_INVALID" in body  # another room's token
    await app.broker.put_sanction(Sanction("r1", "vera", "ban", None, "test", False))
    status, headers, body = await get(http, f"{replay}/{first}")
    assert status == 403 and b"BANNED" in body
    assert "max-age" not in headers.get("Cache-Control", "")  # a refusal is never cached
    # names outside the recording are 404, whatever they try
    other = await hls_url(app, http, user="otto")
    tok2 = other.split("/")[-2]
    for name in ("recording.json", "..%2F..%2Fetc%2Fpasswd", "s1.m4s.tmp"):
        status, _, _ = await get(http, f"{base(app)}/replay/r1/{tok2}/{meta['id']}/{name}")
        assert status == 404, name
    status, _, _ = await get(http, f"{base(app)}/replay/r1/{tok2}/20260101T000000Z-00000000/index.m3u8")
    assert status == 404


async def admin_recordings(app: App, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with http.get(f"{base(app)}/api/admin/rooms/r1/recordings", headers=headers) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["room"] == "r1"
    return body["recordings"]


async def test_a_shutdown_while_live_finishes_the_recording(
    config: Config, receiver: tuple[Receiver, str]
) -> None:
    rx, _ = receiver
    app = App(config)
    await app.start()
    stopped = False
    try:
        async with publishing(app):
            await segments_written(app, "r1", 2)
            recording = app.archive.active["r1"]  # type: ignore[union-attr]
            await app.stop()  # SIGTERM's path: the stream ends, the recording finishes, the webhook goes
            stopped = True
    finally:
        if not stopped:
            await app.stop()
    (event,) = [e for e in rx.accepted if e["type"] == "recording.ready"]
    assert event["data"]["id"] == recording.id and event["data"]["segments"] >= 2
    folder = Path(config.record) / "r1" / recording.id
    assert (folder / "index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")
    # another process reading the same directory lists it
    archive = Archive(RecordConfig(Path(config.record), 1 << 30))
    (listed,) = await archive.list("r1")
    assert listed["id"] == recording.id and listed["state"] == "ready"


async def test_recording_off_is_a_clear_refusal(config: Config, http: aiohttp.ClientSession) -> None:
    app = App(dataclasses.replace(config, record=""))
    await app.start()
    try:
        assert app.archive is None
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(f"{base(app)}/api/admin/rooms/r1/recordings", headers=headers) as response:
            assert response.status == 404 and (await response.json())["error"] == "NOT_FOUND"
        tok = (await hls_url(app, http)).split("/")[-2]
        status, _, body = await get(http, f"{base(app)}/replay/r1/{tok}/20260101T000000Z-00000000/index.m3u8")
        assert status == 404 and b"--record is off" in body
    finally:
        await app.stop()


# -- pure parts ---------------------------------------------------------------------------------


def test_vod_playlist_lists_every_segment_with_its_date() -> None:
    text = render_vod(
        [VodSegment("s0.m4s", 2.0, 1_700_000_000.0), VodSegment("s1.m4s", 2.4, 1_700_000_002.0)]
    )
    assert text.splitlines() == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:3",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init.mp4"',
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z",
        "#EXTINF:2.000,",
        "s0.m4s",
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22.000Z",
        "#EXTINF:2.400,",
        "s1.m4s",
        "#EXT-X-ENDLIST",
    ]
    with pytest.raises(ValueError):
        render_vod([])


def test_danmaku_log_is_bounded_and_forgets_removed_ones() -> None:
    log = DanmakuLog(limit=5, per_second=2)
    now = 1_700_000_000_000

    def danmaku(seq: int, ts: int, **extra: Any) -> dict[str, Any]:
        return {"t": "danmaku", "seq": seq, "ts": ts, "uid": "u", "name": "U", "text": f"m{seq}", **extra}

    log.add([danmaku(1, now), danmaku(2, now + 1), danmaku(3, now + 2), danmaku(4, now + 3, role="host")])
    assert sorted(log.items) == [1, 2, 4] and log.dropped == 1  # 2 a second, staff pass
    log.add([{"t": "delete", "seq": 9, "target": 2, "ts": now}, {"t": "likes", "seq": 10, "ts": now}])
    assert sorted(log.items) == [1, 4]
    log.add([danmaku(s, now + 1000 * s) for s in range(11, 16)])
    assert len(log.items) == 5 and log.dropped == 3  # the total bound
    assert [d["seq"] for d in log.between(now, now + 11_000)] == [1, 4, 11]


def test_recording_paths_carry_no_user_text() -> None:
    assert valid_recording_id("20261206T031500Z-0a1b2c3d")
    for bad in ("..", "20261206T031500Z-0a1b2c3d/..", "x", "20261206T031500Z-0A1B2C3D"):
        assert not valid_recording_id(bad)
    assert room_dir_name("..") == "%2E." and room_dir_name(".") == "%2E" and room_dir_name("a.b") == "a.b"


async def test_archive_serves_only_finished_recordings_files(tmp_path: Path) -> None:
    archive = Archive(RecordConfig(tmp_path, 1 << 20))
    folder = tmp_path / "r1" / "20261206T031500Z-0a1b2c3d"
    folder.mkdir(parents=True)
    (folder / "index.m3u8").write_text("#EXTM3U\n")
    assert archive.file("r1", folder.name, "index.m3u8") is None  # no recording.json: unfinished
    (folder / "recording.json").write_text(json.dumps({"id": folder.name, "start": time.time()}))
    assert archive.file("r1", folder.name, "index.m3u8") == folder / "index.m3u8"
    assert archive.file("r1", folder.name, "recording.json") is None
    assert archive.file("r1", "..", "index.m3u8") is None
    assert [r["id"] for r in await archive.list("r1")] == [folder.name]
    assert await archive.list("r2") == []
