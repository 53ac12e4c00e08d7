"""The presence heartbeat is spread over its interval: each room once per interval, never all at once."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections import Counter
from typing import Any

import pytest

from server.broker import redis_stream
from server.broker.redis import HEARTBEAT_SLICES, RedisBroker
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, requires_redis

pytestmark = requires_redis


async def test_heartbeat_reports_each_room_once_per_interval_in_slices(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the broker's own heartbeat task must not run in between: it would stamp rooms' due times
    # with the real clock while the 60 subscribes wait on Redis (one of its slices every 0.2 s at
    # the default presence TTL), and those rooms would never come due on the test's clock
    broker = RedisBroker(redis_server.url, "n1", presence_ttl=36_000.0)  # first slice after 20 min
    await broker.start()
    try:
        rooms = [f"room{i}" for i in range(60)]
        for room in rooms:
            await broker.subscribe(room, lambda *_: None)
        await asyncio.sleep(0)  # each room's buffered batches are handed over (call_soon)
        clock = types.SimpleNamespace(now=1000.0)
        monkeypatch.setattr(redis_stream, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
        reported: list[list[str]] = []

        async def pipelined(calls: list[Any]) -> list[Any]:
            reported.append([key.split("{r:")[1].split("}")[0] for key, _ in calls])
            return [None] * len(calls)

        monkeypatch.setattr(broker, "pipelined", pipelined)
        interval = 2.0
        await broker.stream._heartbeat_once(interval)  # first call: each room gets a due time
        assert reported == []
        for _ in range(3 * HEARTBEAT_SLICES):  # three intervals, slice by slice
            clock.now += interval / HEARTBEAT_SLICES
            await broker.stream._heartbeat_once(interval)
        counts = Counter(room for call in reported for room in call)
        assert set(counts) == set(rooms)
        assert all(n in (2, 3) for n in counts.values())  # once per interval (the first within it)
        assert max(len(call) for call in reported) < len(rooms) // 2  # spread, not one burst
    finally:
        await broker.close()


async def test_close_returns_when_the_heartbeat_swallowed_its_cancel(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 `asyncio.wait_for` (redis-py writes a command through one) drops a cancel
    that arrives as the command completes: a heartbeat in that call runs on. close() must still
    return (with `while True` it awaited the heartbeat forever: a test run hung 18 min)."""
    broker = RedisBroker(redis_server.url, "n1", presence_ttl=0.3)
    beating = asyncio.Event()

    async def swallowing(interval: float) -> None:
        beating.set()
        with contextlib.suppress(asyncio.CancelledError):  # what 3.11's wait_for may do
            await asyncio.sleep(3600)

    monkeypatch.setattr(broker.stream, "_heartbeat_once", swallowing)
    await broker.start()
    try:
        async with asyncio.timeout(20):
            await beating.wait()
    finally:
        async with asyncio.timeout(20):  # a hang fails here, with this message
            await broker.close()
