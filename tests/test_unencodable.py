"""One unencodable string (a lone UTF-16 surrogate, JSON "\\ud83d") costs only itself (issue #24).

Two lines of defence: every door refuses such text with a code (a token: 4101, any other text:
4002), and the hot path (broker publish, frames) drops an event that still cannot be encoded
alone, counted in `liveroom_events_unencodable_total`, so other rooms and later ticks lose
nothing. The property test drives arbitrary Unicode through the doors on memory and on Redis.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server import metrics
from server.app import App
from server.broker.base import Broker, Publish
from server.broker.memory import MemoryBroker
from server.config import Config
from server.deadline import within
from server.delivery.frames import RoomFrames
from server.wire import protocol
from server.wire.protocol import ErrorCode
from tests.conftest import SECRET, TIMEOUT, WsClient, token
from tests.redis_fixtures import *  # noqa: F403
from tests.redis_fixtures import RedisServer, apoll, requires_redis

BAD = "\ud83d"  # the first half of 😀: what a token service that cuts an emoji in half sends
ADMIN = "admin-token-for-the-unencodable-test"


def dropped() -> float:
    return metrics.unencodable_events._value.get()


def danmaku(text: str, uid: str = "u") -> dict[str, Any]:
    return {"t": "danmaku", "uid": uid, "name": uid, "ts": 1, "text": text}


async def _publish_isolated(broker: Broker) -> None:
    got: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for room in got:
        await broker.subscribe(
            room, lambda r, _e, frame, events: got[r].extend(protocol.unpack(frame)["events"])
        )
    before = dropped()
    await broker.publish_many(
        [
            Publish("a", [danmaku("fine a1"), danmaku(BAD), danmaku("fine a2")], 0, None, 1),
            Publish("b", [danmaku("fine b")], 0, None, 1),
        ]
    )
    await apoll(lambda: len(got["a"]) >= 2 and len(got["b"]) >= 1)
    await broker.publish_many([Publish("a", [danmaku("next tick")], 0, None, 2)])
    await apoll(lambda: len(got["a"]) >= 3)
    assert [e["text"] for e in got["a"]] == ["fine a1", "fine a2", "next tick"]
    assert [e["seq"] for e in got["a"]] == [1, 2, 3]  # no hole where the bad event was
    assert [e["text"] for e in got["b"]] == ["fine b"]
    assert dropped() == before + 1


async def test_memory_broker_drops_the_bad_event_alone() -> None:
    await _publish_isolated(MemoryBroker())


@requires_redis
async def test_redis_broker_drops_the_bad_event_alone(redis_server: RedisServer) -> None:
    from server.broker.redis import RedisBroker

    broker = RedisBroker(redis_server.url, "b0")
    try:
        await broker.start()
        await _publish_isolated(broker)
    finally:
        await broker.close()


@requires_redis
async def test_redis_broker_alone_drops_the_bad_event_alone(redis_server: RedisServer) -> None:
    """Redis unreachable: the broker numbers the tick itself, by the same rule, same isolation."""
    from server.broker.redis import RedisBroker

    broker = RedisBroker(redis_server.url, "b0")
    try:
        await broker.start()
        redis_server.stop()
        await apoll(lambda: not broker.ready)
        await _publish_isolated(broker)
    finally:
        await broker.close()


async def test_frames_merge_drops_the_bad_event_alone() -> None:
    sent: list[bytes] = []
    handed: list[list[str]] = []

    def send(_room: str, _epoch: str, frame: bytes, events: list[dict]) -> None:
        sent.append(frame)
        handed.append([e["text"] for e in events])

    frames = RoomFrames(60.0, send)
    frames.offer("a", "e1", protocol.batch_frame("a", [danmaku("first")], "e1"), [danmaku("first")])
    frames.offer("a", "e1", b"", [danmaku("held"), danmaku(BAD)])  # held: the gate is closed
    before = dropped()
    frames.flush("a")
    assert [e["text"] for e in protocol.unpack(sent[-1])["events"]] == ["held"]
    assert handed[-1] == ["held"]  # the events handed on (per-viewer additions) match the frame
    assert dropped() == before + 1


def test_parsers_refuse_surrogates_with_bad_field() -> None:
    """msgpack itself cannot carry a surrogate; values built in-process go through the same checks."""
    for text in (BAD, "ok" + BAD, "\udc80tail"):
        with pytest.raises(protocol.ProtocolError) as info:
            protocol.clean_text(text, 100)
        assert info.value.code == ErrorCode.BAD_FIELD
        assert not protocol.valid_unicode(text)
    assert protocol.clean_text("😀 \ufffe \u202e ok", 100) == "😀 \ufffe  ok"  # encodable: kept


def test_a_token_with_a_surrogate_is_invalid() -> None:
    from server.wire import auth

    bad = auth.mint(SECRET, room="r1", user="u", role="host", name="Ann" + BAD)
    with pytest.raises(protocol.ProtocolError) as info:
        auth.verify(SECRET, bad, "r1")
    assert info.value.code == ErrorCode.TOKEN_INVALID


@pytest.fixture
def config(config: Config) -> Config:
    config.admin_token = ADMIN
    return config


async def test_ws_join_with_a_surrogate_name_is_refused_cleanly(app: App, server_faults: None) -> None:
    """Closed 4101 with an error frame, not 1011 with a traceback."""
    bad = token("r1", "cut", "viewer", name="Cut " + BAD)
    ws = WsClient(await connect(f"ws://127.0.0.1:{app.port}/ws?token={bad}"))
    frame = await ws.recv()
    assert frame["t"] == "error" and frame["code"] == ErrorCode.TOKEN_INVALID
    with pytest.raises(ConnectionClosed) as info:
        await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == ErrorCode.TOKEN_INVALID


async def test_admin_system_message_with_a_surrogate_is_400(app: App, join: Any, server_faults: None) -> None:
    viewer = await join("v", room="r2")
    base = f"http://127.0.0.1:{app.http_port}/api/admin/rooms/r1/system"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        body = b'{"text": "hi \\ud83d"}'
        async with http.post(base, data=body) as response:
            assert response.status == 400
            assert (await response.json())["code"] == ErrorCode.BAD_FIELD
    speaker = await join("s", room="r2")
    await speaker.send(t="danmaku", text="still here")
    await viewer.events(lambda e: e.get("text") == "still here", 1)


# -- the property: arbitrary Unicode through every door; the other room loses nothing ----------

# surrogates, non-characters, bidi controls, NUL, an emoji, plain ASCII
ODD = ["\ud800", "\udfff", "\ufffe", "\uffff", "\ufdd0", "\u202e", "\u2066", "\u200f", "\x00", "😀", "a"]
texts = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=40),  # surrogates included
    st.text(alphabet=st.sampled_from(ODD), max_size=30),
    st.sampled_from(["x" * 100_000, "😀" * 25_000 + BAD, BAD * 50_000]),
)


def _collect(count: int) -> list[str]:
    found: list[str] = []

    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(texts)
    def draw(text: str) -> None:
        found.append(text)

    draw()
    return found


async def _through_every_door(app: App, text: str, http: aiohttp.ClientSession, n: int) -> None:
    """The text as a token name (WS, WHIP, WHEP, stats), an admin system message, a danmaku."""
    base = f"http://127.0.0.1:{app.http_port}"
    name = text[:32]  # a token name longer than 32 characters is cut by auth.mint itself
    name_token = token("a", f"p{n}", "host", name=name)
    # the token carries the name as JSON: a high surrogate escaped right before a low one
    # ("\ud800\udfff") decodes as one valid character, which is what the server checks
    claimed = json.loads(json.dumps(name))
    try:
        async with connect(f"ws://127.0.0.1:{app.port}/ws?token={name_token}") as ws:
            first = protocol.unpack(await within(ws.recv(), TIMEOUT))
            assert first["t"] in ("snapshot", "error"), first
            if first["t"] == "snapshot":
                assert protocol.valid_unicode(claimed)
                if protocol.valid_unicode(text):
                    packed = protocol.pack({"t": "danmaku", "text": text[:4000]})
                    await ws.send(packed)
            else:
                assert first["code"] == ErrorCode.TOKEN_INVALID and not protocol.valid_unicode(claimed)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code < 4999, closed
    headers = {"Authorization": f"Bearer {name_token}", "Content-Type": "application/sdp"}
    for path in ("/whip/a", "/whep/a"):
        async with http.post(base + path, data=b"v=0\r\n", headers=headers) as response:
            assert response.status < 500, (path, response.status)
    async with http.get(f"{base}/api/rooms/a/stats", headers={"Authorization": f"Bearer {name_token}"}) as r:
        assert r.status < 500
    body = json.dumps({"text": text[:500]}).encode()  # \ud83d escapes: what a JSON client sends
    async with http.post(
        f"{base}/api/admin/rooms/a/system", data=body, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as response:
        assert response.status in (200, 400), response.status
        sent = json.loads(body)["text"]  # as the server reads it: an escaped surrogate pair is one character
        assert (response.status == 200) == (protocol.valid_unicode(sent) and bool(sent.strip()))


async def _other_room_loses_nothing(app: App, join: Any) -> None:
    before = dropped()
    viewer = await join("watcher", room="b")
    speaker = await join("speaker", room="b")
    # drawn at random, plus a high surrogate right before a low one: valid once JSON-decoded
    examples = [*_collect(60), "\ud800\udfff", "a\udbff\udc00b"]
    async with aiohttp.ClientSession() as http:
        for n, text in enumerate(examples):
            await _through_every_door(app, text, http, n)
            await speaker.send(t="danmaku", text=f"b{n}")
    got = await viewer.events(lambda e: e["t"] == "danmaku", len(examples))
    assert [e["text"] for e in got] == [f"b{n}" for n in range(len(examples))]
    assert dropped() == before  # the doors refused every one: none reached the hot path


async def test_arbitrary_unicode_costs_other_rooms_nothing_memory(
    app: App, join: Any, server_faults: None
) -> None:
    """The doors refuse every unencodable text, so nothing even reaches the hot path's last line."""
    await _other_room_loses_nothing(app, join)


@pytest.fixture
async def redis_app(config: Config, redis_server: RedisServer) -> Any:
    config.redis_url = redis_server.url
    app = App(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_arbitrary_unicode_costs_other_rooms_nothing_redis(redis_app: App, server_faults: None) -> None:
    opened: list[WsClient] = []

    async def join(user: str, room: str) -> WsClient:
        client = WsClient(await connect(f"ws://127.0.0.1:{redis_app.port}/ws?token={token(room, user)}"))
        client.snapshot = await client.recv()
        opened.append(client)
        return client

    try:
        await _other_room_loses_nothing(redis_app, join)
    finally:
        await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
