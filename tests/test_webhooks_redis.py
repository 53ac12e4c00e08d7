"""Webhooks from two nodes sharing a real Redis: room started/ended reported once in all."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from websockets.asyncio.client import connect

from server.app import App
from server.config import Config
from tests.conftest import TIMEOUT, WsClient, token
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisTarget, requires_redis
from tests.test_webhooks import SECRET, Receiver, receiver  # noqa: F401 - the receiver fixture

pytestmark = requires_redis


async def _open(app: App, user: str, role: str = "viewer") -> WsClient:
    client = WsClient(await connect(f"ws://127.0.0.1:{app.port}/ws?token={token('r1', user, role)}"))  # type: ignore[arg-type]
    client.snapshot = await client.recv()
    return client


async def _until_open(app: App, count: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while app.analytics.open_sessions != count:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _nodes(config: Config, redis: RedisTarget, url: str) -> AsyncIterator[list[App]]:
    """Two started nodes on one Redis posting to one receiver; flushed only when the test says."""
    base = dataclasses.replace(
        config,
        redis_url=redis.url,
        redis_cluster=redis.cluster,
        analytics_flush=3600.0,
        webhook_url=url,
        webhook_secret=SECRET,
    )
    apps = [App(dataclasses.replace(base, node_id=f"n{i}")) for i in (1, 2)]
    for app in apps:
        await app.start()
    try:
        yield apps
    finally:
        for app in apps:
            await app.stop()


async def _sentinels(rx: Receiver, apps: list[App]) -> None:
    """Each node's sender delivers in order: once both nodes' sentinels are in, any duplicate
    queued before them is too."""
    for app in apps:
        app.webhooks.emit("sentinel", {"node": app.node.node_id})  # type: ignore[union-attr]
    await rx.wait(lambda: sum(e["type"] == "sentinel" for e in rx.accepted) == 2)


async def test_started_and_ended_once_across_nodes(
    redis_any: RedisTarget,
    config: Config,
    receiver: tuple[Receiver, str],  # noqa: F811
) -> None:
    rx, url = receiver
    rx.fail = 0
    async with _nodes(config, redis_any, url) as apps:
        a, b = apps
        hank = await _open(a, "hank", "host")
        alice = await _open(b, "alice")
        # docs/API.md: room.started comes from the node whose INCRBY took the room's shared count
        # from 0; nodes' senders run independently, so the test orders the two flushes itself:
        # n1's events are delivered before n2 flushes at all
        await a.analytics.flush()
        await rx.wait(lambda: len(rx.accepted) == 2)
        assert sorted(e["type"] for e in rx.accepted) == ["host.online", "room.started"]
        assert {e["node"] for e in rx.accepted} == {"n1"}
        # n2's first connection takes the count from 1 to 2: viewers only, no second room.started
        await b.analytics.flush()
        await rx.wait(lambda: len(rx.accepted) == 3)
        assert (rx.accepted[2]["type"], rx.accepted[2]["node"]) == ("viewers", "n2")
        await hank.close()
        await alice.close()
        await _until_open(a, 0)
        await _until_open(b, 0)
        # n2 leaves first (2 -> 1: the room goes on), then n1 takes it to 0 and reports room.ended
        await b.analytics.flush()
        await rx.wait(lambda: len(rx.accepted) == 4)
        assert (rx.accepted[3]["type"], rx.accepted[3]["node"]) == ("viewers", "n2")
        await a.analytics.flush()
        await rx.wait(lambda: len(rx.accepted) == 6)
        assert sorted((e["type"], e["node"]) for e in rx.accepted[4:]) == [
            ("host.offline", "n1"),
            ("room.ended", "n1"),
        ]
        await _sentinels(rx, apps)
        types = [e["type"] for e in rx.accepted]
        assert len(types) == 8
        assert types.count("room.started") == 1 and types.count("room.ended") == 1
        ids = [e["id"] for e in rx.accepted]
        assert len(set(ids)) == len(ids)


async def test_started_once_when_nodes_flush_together(
    redis_any: RedisTarget,
    config: Config,
    receiver: tuple[Receiver, str],  # noqa: F811
) -> None:
    """Both nodes' first connections reach the shared count at the same moment: one INCRBY
    crosses zero, so exactly one room.started, from whichever node that was (no order between
    nodes is promised, docs/API.md)."""
    rx, url = receiver
    rx.fail = 0
    async with _nodes(config, redis_any, url) as apps:
        a, b = apps
        clients = [await _open(a, "hank", "host"), await _open(b, "alice")]
        await asyncio.gather(a.analytics.flush(), b.analytics.flush())
        await _sentinels(rx, apps)
        started = [e for e in rx.accepted if e["type"] == "room.started"]
        assert len(started) == 1
        assert started[0]["node"] in ("n1", "n2")
        assert sorted(e["type"] for e in rx.accepted if e["type"] != "sentinel") == [
            "host.online",
            "room.started",
            "viewers",
        ]
        for client in clients:
            await client.close()
