"""No silent loss after a Redis outage (#23): node A numbers a room's danmaku alone under a
local epoch while Redis is down; once Redis is back its viewers and node B's must be told (a
fresh snapshot, `recovered: false`, `reset: true`, on the live connection: no reconnect), not
continue on the old stream as if nothing had happened; and a client that ignores that snapshot
is still told by the next batch (PROTOCOL.md, *Stream identity*). Real nodes, a real
redis-server restarted with its AOF."""

from __future__ import annotations

import asyncio

from tests.conftest import WsClient
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import WAIT, RedisServer, apoll, requires_redis

pytestmark = requires_redis


async def _until_reset(viewer: WsClient, epoch: str, seq: int) -> tuple[list[str], dict, str, int]:
    """The danmaku texts a viewer gets until its in-band snapshot, that snapshot, and the
    (epoch, seq) of the last batch before it (where a client ignoring the snapshot stands)."""
    got: list[str] = []
    while True:
        frame = await viewer.recv(WAIT)
        if frame["t"] == "snapshot":
            return got, frame, epoch, seq
        if frame["t"] == "batch":
            got += [e.get("text", "") for e in frame["events"] if e["t"] == "danmaku"]
            epoch, seq = frame.get("epoch", epoch), frame["events"][-1]["seq"]


async def _first_batch(viewer: WsClient) -> dict:
    return await viewer.recv_until(lambda f: f["t"] == "batch" and bool(f["events"]), WAIT)


def _told_by(batch: dict, epoch: str, seq: int) -> bool:
    """PROTOCOL.md's rules make a client at (epoch, seq) resume on this batch."""
    first = batch["events"][0]["seq"]
    return first != seq + 1 if batch["epoch"] != epoch else first > seq + 1


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
    alone = await talker.recv_until(
        lambda f: f["t"] == "batch" and any(e.get("text") == "numbered alone" for e in f["events"])
    )
    persistent_redis.start()
    await asyncio.gather(a.wait_ready(True), b.wait_ready(True))

    # B's viewer is told on its connection (the event was never in Redis), and stays
    got, snap, last_epoch, seq = await _until_reset(quiet, epoch, seq)
    assert "numbered alone" not in got, got
    assert snap["reset"] is True and snap["recovered"] is False and snap["epoch"] != epoch, snap
    assert snap["you"]["uid"] == "quiet"
    # A's viewer saw the events numbered alone: it is told too, and had it ignored the snapshot,
    # the next batch would tell it (a new epoch not continuing its local seqs)
    _, talker_snap, talker_epoch, talker_seq = await _until_reset(
        talker, alone["epoch"], alone["events"][-1]["seq"]
    )
    assert talker_snap["reset"] is True and talker_epoch.startswith("local-"), talker_epoch
    await talker.send(t="danmaku", text="after")
    assert _told_by(await _first_batch(talker), talker_epoch, talker_seq)
    await quiet.events(lambda e: e.get("text") == "after", 1)  # same connection, no rejoin
    assert b.metric("liveroom_room_resets_total") >= 1 and a.metric("liveroom_room_resets_total") >= 1
    again = await open_client(b, "quiet2", resume={"epoch": last_epoch, "seq": seq})
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

    got, snap, _, _ = await _until_reset(quiet, "", 0)
    assert "numbered alone" not in got and snap["reset"] is True, (got, snap)


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


async def test_redis_that_lost_the_room_resets_it_in_band_on_every_node(
    redis_server: RedisServer, start_nodes, open_client
) -> None:
    """Redis restarts empty (no persistence): the room's stream starts over under a new epoch.
    Viewers on both nodes get the in-band snapshot and stay; had they ignored it, the first
    batch after it tells them (a new epoch whose first seq does not follow theirs)."""
    a, b = start_nodes(redis_server.url, 2)
    talker = await open_client(a, "talker")
    viewers = {"a": await open_client(a, "va"), "b": await open_client(b, "vb")}
    for i in range(3):
        await talker.send(t="danmaku", text=f"before {i}")
    where = {}
    for name, viewer in viewers.items():
        got = await viewer.recv_until(
            lambda f: f["t"] == "batch" and any(e.get("text") == "before 2" for e in f["events"])
        )
        where[name] = (got["epoch"], got["events"][-1]["seq"])

    redis_server.stop()
    await asyncio.gather(a.wait_ready(False), b.wait_ready(False))
    redis_server.start()  # empty: the room is gone
    await asyncio.gather(a.wait_ready(True), b.wait_ready(True))

    for name, viewer in viewers.items():
        _, snap, last_epoch, last_seq = await _until_reset(viewer, *where[name])
        assert snap["reset"] is True and snap["recovered"] is False, snap
        assert snap["epoch"] not in (where[name][0], last_epoch), (snap, last_epoch)
        where[name] = (last_epoch, last_seq)
    await talker.send(t="danmaku", text="after")
    for name, viewer in viewers.items():
        first = await _first_batch(viewer)
        assert _told_by(first, *where[name]), (first, where[name])
        if not any(e.get("text") == "after" for e in first["events"]):
            await viewer.events(lambda e: e.get("text") == "after", 1)  # same connection
