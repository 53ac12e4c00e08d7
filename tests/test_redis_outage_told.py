"""No silent loss after a Redis outage (#23): node A numbers a room's danmaku alone under a
local epoch while Redis is down; a viewer on node B, which saw no local event, must be told
(1012, then `recovered: false` with a fresh snapshot) once Redis is back, not continue on the
old epoch as if nothing had happened. Real nodes, a real redis-server restarted with its AOF."""

from __future__ import annotations

import asyncio

from websockets.exceptions import ConnectionClosed

from tests.conftest import WsClient
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import WAIT, RedisServer, apoll, requires_redis

pytestmark = requires_redis


async def _until_closed(viewer: WsClient, seq: int) -> tuple[list[str], int | None, int]:
    """The danmaku texts a viewer gets until its connection closes, the close code, its last seq."""
    got: list[str] = []
    try:
        while True:
            frame = await viewer.recv(WAIT)
            if frame["t"] == "batch":
                got += [e.get("text", "") for e in frame["events"] if e["t"] == "danmaku"]
                seq = frame["events"][-1]["seq"]
    except ConnectionClosed as exc:
        return got, exc.rcvd.code if exc.rcvd is not None else None, seq


async def test_viewer_on_a_quiet_node_is_told_of_events_numbered_alone(
    persistent_redis: RedisServer, start_nodes, open_client
) -> None:
    a, b = start_nodes(persistent_redis.url, 2)
    talker = await open_client(a, "talker")
    quiet = await open_client(b, "quiet")  # B's only viewer: it sends nothing
    await talker.send(t="danmaku", text="before")
    seen = await quiet.events(lambda e: e.get("text") == "before", 1)
    epoch, seq = quiet.snapshot["epoch"], seen[0]["seq"]  # where the viewer is

    persistent_redis.stop()
    await asyncio.gather(a.wait_ready(False), b.wait_ready(False))
    await talker.send(t="danmaku", text="numbered alone")  # under A's local epoch
    await talker.events(lambda e: e.get("text") == "numbered alone", 1)
    persistent_redis.start()
    await asyncio.gather(a.wait_ready(True), b.wait_ready(True))

    # B's viewer either gets the event or is told: here, told (the event was never in Redis)
    got, code, seq = await _until_closed(quiet, seq)
    assert "numbered alone" not in got and code == 1012, (got, code)
    again = await open_client(b, "quiet", resume={"epoch": epoch, "seq": seq})
    assert again.snapshot["recovered"] is False and again.snapshot["epoch"] != epoch, again.snapshot


async def test_viewer_is_told_even_when_the_room_closed_where_it_was_numbered_alone(
    persistent_redis: RedisServer, start_nodes, open_client
) -> None:
    """As above, but node A's last viewer of the room leaves before Redis is back, so A no
    longer holds the room when it reconnects: it must still retire the room's Redis epoch (it
    keeps that duty past the room's close), or B's viewer carries on as if nothing was missed."""
    a, b = start_nodes(persistent_redis.url, 2)
    talker = await open_client(a, "talker")
    quiet = await open_client(b, "quiet")
    await talker.send(t="danmaku", text="before")
    await quiet.events(lambda e: e.get("text") == "before", 1)

    persistent_redis.stop()
    await asyncio.gather(a.wait_ready(False), b.wait_ready(False))
    await talker.send(t="danmaku", text="numbered alone")
    await talker.events(lambda e: e.get("text") == "numbered alone", 1)
    await talker.close()  # A's only viewer: the room closes on A
    await apoll(
        lambda: asyncio.to_thread(lambda: a.metric("liveroom_rooms") == 0), what="the room closed on A"
    )
    persistent_redis.start()
    await asyncio.gather(a.wait_ready(True), b.wait_ready(True))

    got, code, _ = await _until_closed(quiet, 0)
    assert "numbered alone" not in got and code == 1012, (got, code)


async def test_a_room_numbered_alone_with_nothing_numbered_goes_on_without_a_reset(
    redis_server: RedisServer,
) -> None:
    """A room whose tick Redis did not take is numbered alone, but a tick with no event (a count
    unchanged, a held room's turn) numbers nothing: no client saw the local epoch. Once Redis
    serves again the room goes on from the Redis seq it left, with what it missed replayed, not
    reset (a reset closes every viewer with 1012: a 5,000-connection soak saw a room reset this
    way again and again). A room that did number events alone is still reset (tests above)."""
    from server.broker.base import Publish
    from server.broker.redis import RedisBroker
    from server.wire import protocol

    a, b = RedisBroker(redis_server.url, "qa"), RedisBroker(redis_server.url, "qb")
    got: list[tuple[str, int, str]] = []
    resets: list[str] = []
    try:
        await a.start()
        await b.start()
        b.on_room_reset = lambda room_id, *_: resets.append(room_id)
        await a.subscribe("q", lambda *_: None)
        await b.subscribe(
            "q",
            lambda _r, epoch, _f, events: got.extend((epoch, e["seq"], e.get("text", "")) for e in events),
        )
        danmaku = {"t": "danmaku", "uid": "u", "name": "u", "text": "one", "ts": 1}
        await a.publish_many([Publish("q", [danmaku], 0, None, protocol.now_ms())])
        await apoll(lambda: got, what="the first danmaku on B")
        epoch, seq, _ = got[0]

        real, broken = b.stream._publish_call, [True]

        def failing(room_id, *args):  # B's next tick reaches Redis malformed: refused, nothing stored
            key, call = real(room_id, *args)
            return (key, call[:4]) if broken and broken.pop() else (key, call)

        b.stream._publish_call = failing
        await b.publish_many([Publish("q", [], 0, None, protocol.now_ms())])  # nothing to number
        assert b.stream._rooms["q"].local  # numbered alone, but nothing numbered
        await apoll(lambda: b.ready, what="B serving again")
        await a.publish_many([Publish("q", [{**danmaku, "text": "two"}], 0, None, protocol.now_ms())])
        await apoll(lambda: len(got) >= 2, what="the second danmaku on B")
        assert got[1] == (epoch, seq + 1, "two"), got
        assert resets == [] and not b.stream._rooms["q"].local
    finally:
        await a.close()
        await b.close()
