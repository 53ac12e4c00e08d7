"""Webhooks from two nodes sharing a real Redis: room started/ended reported once in all."""

from __future__ import annotations

import asyncio
import dataclasses

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


async def test_started_and_ended_once_across_nodes(
    redis_any: RedisTarget,
    config: Config,
    receiver: tuple[Receiver, str],  # noqa: F811
) -> None:
    rx, url = receiver
    rx.fail = 0
    base = dataclasses.replace(
        config,
        redis_url=redis_any.url,
        redis_cluster=redis_any.cluster,
        analytics_flush=3600.0,
        webhook_url=url,
        webhook_secret=SECRET,
    )
    apps = [App(dataclasses.replace(base, node_id=f"n{i}")) for i in (1, 2)]
    for app in apps:
        await app.start()
    a, b = apps
    try:
        hank = await _open(a, "hank", "host")
        alice = await _open(b, "alice")
        for app in apps:
            await app.analytics.flush()
        await rx.wait(lambda: len(rx.accepted) == 3)
        assert sorted(e["type"] for e in rx.accepted) == ["host.online", "room.started", "viewers"]
        [started] = [e for e in rx.accepted if e["type"] == "room.started"]
        assert started["node"] == "n1"  # the first connection of the room was on n1
        await hank.close()
        await alice.close()
        await _until_open(a, 0)
        await _until_open(b, 0)
        for app in apps:
            await app.analytics.flush()
        await rx.wait(lambda: len(rx.accepted) == 6)
        # each node's sender delivers in order: past both nodes' sentinels, a duplicate would be here
        for app in apps:
            app.webhooks.emit("sentinel", {"node": app.node.node_id})  # type: ignore[union-attr]
        await rx.wait(lambda: sum(e["type"] == "sentinel" for e in rx.accepted) == 2)
        types = [e["type"] for e in rx.accepted]
        assert len(types) == 8
        assert types.count("room.started") == 1 and types.count("room.ended") == 1
        ids = [e["id"] for e in rx.accepted]
        assert len(set(ids)) == len(ids)
    finally:
        for app in apps:
            await app.stop()
