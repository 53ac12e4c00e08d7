"""Room analytics across two nodes sharing one real Redis: both nodes' facts in one figure."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from server.app import App
from server.config import Config
from tests.conftest import TIMEOUT, WsClient, token
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisTarget, requires_redis
from tests.test_analytics import ADMIN, T0, FakeClock

pytestmark = requires_redis


async def _open(app: App, user: str) -> WsClient:
    client = WsClient(await connect(f"ws://127.0.0.1:{app.port}/ws?token={token('r1', user)}"))
    client.snapshot = await client.recv()
    return client


async def test_two_nodes_exact_figures(redis_any: RedisTarget, config: Config) -> None:
    clock = FakeClock()
    base = dataclasses.replace(
        config,
        redis_url=redis_any.url,
        redis_cluster=redis_any.cluster,
        analytics_flush=3600.0,
        admin_token=ADMIN,
    )
    apps = [App(dataclasses.replace(base, node_id=f"n{i}")) for i in (1, 2)]
    for app in apps:
        await app.start()
        app.analytics.clock = clock
    a, b = apps
    try:

        async def at(offset: float, app: App, action: Callable[[], Awaitable[Any]]) -> Any:
            clock.now = T0 + offset
            before = app.analytics.pending
            result = await action()
            async with asyncio.timeout(TIMEOUT):
                while app.analytics.pending == before:
                    await asyncio.sleep(0.01)
            return result

        alice = await at(10, a, lambda: _open(a, "alice"))
        bob = await at(20, b, lambda: _open(b, "bob"))
        await at(30, a, lambda: alice.send(t="danmaku", text="hi"))
        await at(40, b, lambda: bob.send(t="like", count=3))
        await at(70, b, bob.ws.close)
        clock.now = T0 + 120
        await b.analytics.flush()  # node a's request flushes only its own buffer
        url = f"http://127.0.0.1:{a.http_port}/api/rooms/r1/stats"
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as response,
        ):
            assert response.status == 200
            stats = await response.json()
        day = stats["day"]
        # alice [10, open) on n1 = 110 s, bob [20, 70) on n2 = 50 s
        assert (day["concurrent_now"], day["peak_concurrent"], day["unique_viewers"]) == (1, 2, 2)
        assert (day["watch_time_total_s"], day["watch_time_avg_s"]) == (160.0, 80.0)
        assert (day["interaction_rate"], day["danmaku"], day["likes"], day["return_rate"]) == (1.0, 1, 3, 0.0)
        assert [s["users"] for s in day["funnel"]] == [2, 2, 2, 0]
        assert day["unique_viewers_store"] == 2  # HyperLogLog
        assert stats["live"]["start"] == T0 + 10
        await alice.close()
    finally:
        for app in apps:
            await app.stop()
