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
