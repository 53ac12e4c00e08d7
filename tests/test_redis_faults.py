"""DM backlog on every connection and idempotent sends across node processes sharing a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from websockets.asyncio.client import connect

from server.analytics.records import DANMAKU, JOIN, LEAVE, day_of
from server.app import App
from server.config import Config
from tests.conftest import TIMEOUT, WsClient, token
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, RedisTarget, requires_redis
from tests.test_webhooks import SECRET, Receiver, receiver  # noqa: F401 - the receiver fixture

pytestmark = requires_redis


async def _open(app: App, user: str) -> WsClient:
    client = WsClient(await connect(f"ws://127.0.0.1:{app.port}/ws?token={token('r1', user)}"))
    client.snapshot = await client.recv()
    return client


async def test_second_connection_on_same_node_gets_the_backlog(
    redis_server: RedisServer, start_nodes, open_client
):
    n0, n1 = start_nodes(redis_server.url, 2)
    await open_client(n0, "bob", room="ra")  # the dead connection: never reads
    alice = await open_client(n1, "alice")
    acks = []
    for i in range(3):
        await alice.send(t="dm", to="bob", text=f"m{i}")
        acks.append(await alice.recv_until(lambda f: f["t"] == "dm_ack"))
    fresh = await open_client(n0, "bob", room="rb")  # same node as the dead one
    got = [await fresh.recv_until(lambda f: f["t"] == "dm") for _ in range(3)]
    assert [d["id"] for d in got] == [a["id"] for a in acks]
    await alice.send(t="dm", to="bob", text="live")
    assert (await fresh.recv_until(lambda f: f["t"] == "dm"))["text"] == "live"


async def test_a_dm_whose_message_never_reached_the_node_is_caught_up(
    redis_server: RedisServer, start_nodes, open_client
):
    """A DM stored but whose pub/sub message this node never got (pub/sub promises nothing
    across a reconnect or a failover) comes before the next DM: each message names the DM kept
    before it, and a node that did not deliver that one reads the stream first."""
    from server.broker import redis_scripts as rs

    (node,) = start_nodes(redis_server.url, 1)
    bob = await open_client(node, "bob")
    alice = await open_client(node, "alice")
    await alice.send(t="dm", to="bob", text="m0")
    assert (await bob.recv_until(lambda f: f["t"] == "dm"))["text"] == "m0"
    lost = {"t": "dm", "from": "alice", "name": "alice", "to": "bob", "text": "lost", "ts": 1}
    keys = rs.user_keys("bob")
    with redis_server.client() as client:  # stored, published where nobody listens: lost
        args = ["b", rs.open_map(lost, "id"), 100, "nowhere", "PUBLISH", 600, 0, ""]
        client.eval(rs.SEND_DM, 1, keys.dms, *args)
    await alice.send(t="dm", to="bob", text="m2")
    got = [(await bob.recv_until(lambda f: f["t"] == "dm"))["text"] for _ in range(2)]
    assert got == ["lost", "m2"]


async def test_dm_retry_on_another_node_returns_the_original_ack(
    redis_server: RedisServer, start_nodes, open_client
):
    n0, n1 = start_nodes(redis_server.url, 2)
    bob = await open_client(n1, "bob")
    alice = await open_client(n0, "alice")
    await alice.send(t="dm", to="bob", text="once", cid="c-1")
    ack = await alice.recv_until(lambda f: f["t"] == "dm_ack")
    n0.stop()  # SIGTERM: the sender's connection is reset (1012)
    again = await open_client(n1, "alice")
    await again.send(t="dm", to="bob", text="once", cid="c-1")
    assert await again.recv_until(lambda f: f["t"] == "dm_ack") == ack
    await again.send(t="dm", to="bob", text="after", cid="c-2")
    await again.recv_until(lambda f: f["t"] == "dm_ack")
    texts = [(await bob.recv_until(lambda f: f["t"] == "dm"))["text"] for _ in range(2)]
    assert texts == ["once", "after"]
    assert redis_server.client().xlen("lr:{u:bob}:dm") == 2


async def test_danmaku_retry_on_another_node_is_sequenced_once(
    redis_any: RedisTarget, start_nodes, open_client
) -> None:
    """Danmaku `cid`s are claimed once per tick (one pipeline): a retry on another node, and a
    copy sent twice within one tick, still reach the room once."""
    n0, n1 = start_nodes(redis_any, 2)
    watcher = await open_client(n1, "watcher")
    talker = await open_client(n0, "talker")
    await talker.send(t="danmaku", text="hello", cid="d1")
    await talker.send(t="danmaku", text="hello", cid="d1")  # same tick, same node
    await talker.send(t="danmaku", text="other", cid=1)  # typed: not the string "1"
    await talker.send(t="danmaku", text="other", cid="1")
    first = await watcher.events(lambda e: e["t"] == "danmaku", 3)
    assert [(e["text"], e["cid"]) for e in first] == [("hello", "d1"), ("other", 1), ("other", "1")]
    n0.stop()  # SIGTERM: the talker's connection is reset (1012)
    again = await open_client(n1, "talker")
    await again.send(t="danmaku", text="hello", cid="d1")  # the retry, on the other node
    await again.send(t="danmaku", text="next", cid="d2")
    nxt = await watcher.events(lambda e: e["t"] == "danmaku", 1)
    assert (nxt[0]["text"], nxt[0]["cid"]) == ("next", "d2")


async def test_analytics_and_webhooks_ride_out_a_redis_outage(
    persistent_redis: RedisServer,
    config: Config,
    receiver: tuple[Receiver, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    rx, url = receiver
    rx.fail = 0
    app = App(
        dataclasses.replace(
            config,
            redis_url=persistent_redis.url,
            analytics_flush=3600.0,  # flushed by the test
            webhook_url=url,
            webhook_secret=SECRET,
        )
    )
    await app.start()
    analytics = app.node.analytics
    try:
        alice = await _open(app, "alice")
        await analytics.flush()
        await rx.wait(lambda: any(e["type"] == "room.started" for e in rx.accepted))
        assert persistent_redis.proc is not None
        persistent_redis.proc.kill()  # SIGKILL: no goodbye
        persistent_redis.proc.wait()
        caplog.clear()
        bob = await _open(app, "bob")
        for i in range(5):
            await bob.send(t="danmaku", text=f"d{i}")
        await bob.recv_until(lambda f: f["t"] == "batch" and any(e.get("text") == "d4" for e in f["events"]))
        await bob.close()
        async with asyncio.timeout(TIMEOUT):
            while analytics.open_sessions != 1:
                await asyncio.sleep(0.01)
        kept = analytics.pending
        assert kept >= 7  # bob's join, 5 danmaku, his leave
        await analytics.flush()  # the store is down: kept, not dropped
        assert analytics.unstored == kept and analytics.dropped == 0
        persistent_redis.start()  # back, with its data (AOF)
        async with asyncio.timeout(TIMEOUT):
            while analytics.unstored:
                await analytics.flush()
                await asyncio.sleep(0.1)
        day = day_of(analytics.clock())
        records = await analytics.store.records("r1", [day])
        bobs = [r.kind for r in records if r.uid == "bob"]
        assert bobs.count(JOIN) == 1 and bobs.count(LEAVE) == 1 and bobs.count(DANMAKU) == 5
        # alice's join was stored before the outage; the room, numbered alone meanwhile, is reset
        # once Redis is back (1012 to its viewers), so her leave may be stored already: not counted
        assert [r.kind for r in records if r.uid == "alice"].count(JOIN) == 1
        await rx.wait(lambda: any(e["type"] == "viewers" and "bob" in e["data"]["left"] for e in rx.accepted))
        await alice.close()
    finally:
        await app.stop()
    ours = [r for r in caplog.records if r.name.startswith(("liveroom.analytics", "liveroom.webhooks"))]
    assert any(r.levelno == logging.WARNING and "kept for retry" in r.getMessage() for r in ours)
    assert all(r.levelno < logging.ERROR and r.exc_info is None for r in ours), [r.getMessage() for r in ours]
