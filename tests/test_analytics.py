"""Room analytics: a scripted session with an injected clock gives hand-computed figures exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from server.analytics import aggregate
from server.analytics.records import DAY, Record
from server.app import App
from server.config import Config
from tests import prom
from tests.conftest import TIMEOUT, WsClient

T0 = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC).timestamp()  # a Saturday noon, UTC
MIDNIGHT = T0 - 12 * 3600
ADMIN = "admin-token-for-tests"


@pytest.fixture
def config(config: Config) -> Config:
    config.analytics_flush = 3600.0  # only explicit flushes: the test sees every record buffered
    config.admin_token = ADMIN
    return config


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


async def _stats(app: App, room: str, token: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{app.http_port}/api/rooms/{room}/stats"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json()


async def test_scripted_session_exact_figures(app: App, join: Callable[..., Awaitable[WsClient]]) -> None:
    clock = FakeClock()
    analytics = app.analytics
    analytics.clock = clock
    expected = analytics.pending

    async def at(offset: float, action: Callable[[], Awaitable[Any]], records: int = 1) -> Any:
        """Run one scripted action at T0+offset and wait until its record(s) are buffered."""
        nonlocal expected
        clock.now = T0 + offset
        result = await action()
        expected += records
        await _until(lambda: analytics.pending == expected)
        return result

    # yesterday: carol watches 100 s (makes her a returning viewer today)
    carol_y = await at(-DAY, lambda: join("carol"))
    await at(-DAY + 100, carol_y.close)
    hank = await at(0, lambda: join("hank", role="host"))
    await _until(lambda: "hank" in app.hub.rooms["r1"].hosts)
    alice = await at(10, lambda: join("alice"))
    bob = await at(20, lambda: join("bob"))
    await at(30, lambda: alice.send(t="danmaku", text="hi"))
    await at(40, lambda: bob.send(t="like", count=3))
    carol = await at(50, lambda: join("carol"))
    await at(60, lambda: alice.send(t="dm", to="hank", text="hello host"))
    await at(65, lambda: alice.send(t="stats", first_frame_ms=420))
    await at(66, lambda: bob.send(t="stats", first_frame_ms=1300))
    await at(70, bob.close)
    await at(80, lambda: carol.send(t="like", count=2))
    await at(90, carol.close)
    dave = await at(100, lambda: join("dave"))
    await at(110, dave.close)
    clock.now = T0 + 120

    status, stats = await _stats(app, "r1", ADMIN)
    assert status == 200
    assert stats["room"] == "r1" and stats["now"] == T0 + 120
    # sessions today: alice [10, open) = 110 s, bob [20, 70) = 50, carol [50, 90) = 40, dave [100, 110) = 10
    common = {
        "end": T0 + 120,
        "concurrent_now": 1,
        "peak_concurrent": 3,  # alice, bob, carol at 50..70
        "unique_viewers": 4,
        "watch_time_total_s": 210.0,
        "watch_time_avg_s": 52.5,
        "interaction_rate": 0.75,  # alice (danmaku, DM), bob (like), carol (like); not dave
        "danmaku": 1,
        "likes": 5,
        "return_rate": 0.25,  # carol watched yesterday
        "funnel": [
            {"step": "joined", "users": 4, "rate": 1.0},
            {"step": "watched:30", "users": 3, "rate": 0.75},
            {"step": "interacted", "users": 3, "rate": 0.75},
            {"step": "dm_host", "users": 1, "rate": 0.25},
        ],
        "first_frame": {
            "count": 2,
            "p50": 420,
            "p90": 1300,
            "p99": 1300,
            "buckets_ms": {"100": 0, "250": 0, "500": 1, "1000": 0, "2000": 1, "5000": 0, "+Inf": 0},
        },
        "questions": {  # none asked in this session (tests/test_answers.py covers them)
            "asked": 0,
            "answered_assistant": 0,
            "answered_host": 0,
            "unanswered": 0,
            "latency_ms": {"p50": None, "p95": None},
            "top_unanswered": [],
        },
    }
    for window, start in (("live", T0 + 10), ("hour", T0 + 120 - 3600), ("day", MIDNIGHT)):
        minutes = (T0 + 120 - start) / 60
        want = {**common, "start": start, "danmaku_per_min": 1 / minutes, "likes_per_min": 5 / minutes}
        got = dict(stats[window])
        got.pop("unique_viewers_store", None)
        assert got == want, window
    assert stats["day"]["unique_viewers_store"] == 4
    del hank


async def test_stats_authorisation(app: App, join: Callable[..., Awaitable[WsClient]]) -> None:
    from tests.conftest import token

    url = f"http://127.0.0.1:{app.http_port}/api/rooms/r1/stats"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 401
        for bad, status in (
            (token("r1", "v", "viewer"), 403),
            (token("r1", "m", "moderator"), 403),
            (token("r2", "h", "host"), 403),
            ("not-a-token", 401),
        ):
            async with http.get(url, headers={"Authorization": f"Bearer {bad}"}) as response:
                assert response.status == status, bad
    status, stats = await _stats(app, "r1", token("r1", "h", "host"))
    assert status == 200 and stats["day"]["unique_viewers"] == 0 and stats["live"] is None


def test_aggregate_open_leave_before_window() -> None:
    """A leave whose join is older than what was read counts from the window start."""
    records = [Record("leave", "r", "a", T0 + 30, "s1"), Record("join", "r", "b", T0 + 10, "s2")]
    out = aggregate.window_stats(records, aggregate.sessions(records, T0), T0, T0 + 60, {})
    assert out["watch_time_total_s"] == 30 + 50
    assert (out["concurrent_now"], out["peak_concurrent"]) == (1, 2)


def test_bad_funnel_refused() -> None:
    with pytest.raises(ValueError):
        aggregate.check_funnel(["joined", "bought"])


async def _metric(app: App, kind: str) -> float:
    """Records of `kind` flushed, from the node's /metrics page (0 when not exported yet)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.port}/metrics") as response:
        text = await response.text()
    found = prom.sample(text, "liveroom_analytics_records_total", kind=kind)
    return 0.0 if found is None else found


async def test_metrics_follow_joins_and_messages(app: App, join: Callable[..., Awaitable[WsClient]]) -> None:
    joins, danmaku, likes = "join", "danmaku", "like"
    before = {name: await _metric(app, name) for name in (joins, danmaku, likes)}
    alice = await join("alice")
    await join("bob")
    await alice.send(t="danmaku", text="hi")
    await alice.send(t="like", count=2)
    await _until(lambda: app.analytics.pending == 4)
    await app.analytics.flush()
    assert await _metric(app, joins) == before[joins] + 2
    assert await _metric(app, danmaku) == before[danmaku] + 1
    assert await _metric(app, likes) == before[likes] + 1  # one record, value 2


async def test_recorder_cache_and_one_first_frame_per_connection() -> None:
    """Direct use of the recorder: stats are reused for STATS_CACHE seconds of the clock."""
    from server.analytics.recorder import STATS_CACHE, Analytics
    from server.analytics.store import MemoryStore

    clock = FakeClock()
    analytics = Analytics(MemoryStore(), "n", clock=clock)
    conn = object()
    analytics.joined(conn, "r", "alice", "viewer")
    analytics.first_frame(conn, 300)
    analytics.first_frame(conn, 9000)  # a second report of the same connection is ignored
    first = await analytics.stats("r")
    assert first["day"]["first_frame"]["count"] == 1 and first["day"]["concurrent_now"] == 1
    clock.now += STATS_CACHE / 2
    analytics.left(conn)
    assert await analytics.stats("r") is first  # cached
    clock.now += STATS_CACHE
    again = await analytics.stats("r")
    assert again["day"]["concurrent_now"] == 0
    assert again["day"]["watch_time_total_s"] == STATS_CACHE / 2


def test_leave_and_join_at_the_same_instant_do_not_make_a_peak() -> None:
    records = [
        Record("join", "r", "a", T0, "s1"),
        Record("leave", "r", "a", T0 + 10, "s1"),
        Record("join", "r", "b", T0 + 10, "s2"),
    ]
    out = aggregate.window_stats(records, aggregate.sessions(records, T0), T0, T0 + 20, {})
    assert (out["concurrent_now"], out["peak_concurrent"]) == (1, 1)
    assert aggregate.live_start(aggregate.sessions(records, T0), T0 + 20) == T0
