"""Gifts, follows and live notices, PK rounds across node processes on a real Redis (and cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.conftest import TIMEOUT, WsClient
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, RedisTarget, failover_host, requires_redis
from tests.test_pk import run_pk

pytestmark = requires_redis
WAIT = 30.0


async def until_events(
    client: WsClient, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while not done(seen):
            frame = await client.recv(WAIT)
            if frame["t"] == "batch":
                seen.extend(frame["events"])
    return seen


def board_at(version: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda es: any(e["t"] == "board" and e["ver"] >= version for e in es)


async def test_gifts_on_two_nodes_one_board_and_a_retry_on_the_other_node(
    redis_any: RedisTarget, start_nodes, open_client
) -> None:
    n0, n1 = start_nodes(redis_any, 2, "--combo-window", "3600")
    watch0 = await open_client(n0, "w0", "gr")
    watch1 = await open_client(n1, "w1", "gr")
    a = await open_client(n0, "a", "gr")
    b = await open_client(n1, "b", "gr")
    for i in range(3):
        await a.send(t="gift", gift="rose", cid=f"a{i}")
    for i in range(2):
        await b.send(t="gift", gift="star", cid=f"b{i}")
    first = [await a.recv_until(lambda f: f["t"] == "gift_ack", TIMEOUT) for _ in range(3)]
    for _ in range(2):
        await b.recv_until(lambda f: f["t"] == "gift_ack", TIMEOUT)
    expected = [{"uid": "b", "name": "b", "score": 100}, {"uid": "a", "name": "a", "score": 30}]
    for watcher in (watch0, watch1):  # both nodes see every gift and converge on the same board
        seen = await until_events(  # a board and the gifts may ride different nodes' ticks
            watcher, lambda es: board_at(5)(es) and sum(e["n"] for e in es if e["t"] == "gift") == 5
        )
        gifts = [e for e in seen if e["t"] == "gift"]
        assert sum(e["n"] for e in gifts if e["uid"] == "a") == 3
        assert sum(e["n"] for e in gifts if e["uid"] == "b") == 2
        assert max((e for e in seen if e["t"] == "board"), key=lambda e: e["ver"])["top"] == expected
    a_again = await open_client(n1, "a", "gr")  # a's retry of its last gift, through the other node
    await a_again.send(t="gift", gift="rose", cid="a2")
    assert await a_again.recv_until(lambda f: f["t"] == "gift_ack", TIMEOUT) == first[2]
    late = await open_client(n1, "late", "gr")
    assert late.snapshot is not None and late.snapshot["board"] == expected  # the retry added nothing


async def test_a_follower_in_another_room_on_another_node_is_told_when_the_host_goes_live(
    redis_server: RedisServer, start_nodes, open_client
) -> None:
    n0, n1 = start_nodes(redis_server.url, 2)
    fan = await open_client(n1, "fan", "elsewhere")
    await fan.send(t="follow", host="hana", cid=1)
    assert (await fan.recv_until(lambda f: f["t"] == "follow_ack", TIMEOUT))["followers"] == 1
    watcher = await open_client(n0, "w", "show")
    with failover_host([n0.ws_url], "show", 160, 120):  # a real host publishing over WebRTC on n0
        live = await watcher.recv_until(
            lambda f: f["t"] == "batch" and any(e["t"] == "live" and e["on"] for e in f["events"]), WAIT
        )
        notice = await fan.recv_until(lambda f: f["t"] == "live_notice", WAIT)
    assert (notice["host"], notice["room"]) == ("hana", "show")
    assert notice["ts"] >= next(e for e in live["events"] if e["t"] == "live")["ts"]


async def test_pk_between_two_rooms_on_two_nodes(redis_any: RedisTarget, start_nodes, open_client) -> None:
    n0, n1 = start_nodes(redis_any, 2)
    ha = await open_client(n0, "ha", "ra", role="host")
    hb = await open_client(n1, "hb", "rb", role="host")
    va = await open_client(n1, "va", "ra")  # each room's viewer on the other room's host's node
    vb = await open_client(n0, "vb", "rb")
    await run_pk(ha, hb, va, vb)
