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
    client: WsClient, done: Callable[[list[dict[str, Any]]], bool], wait: float = WAIT
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(wait):
        while not done(seen):
            frame = await client.recv(wait)
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


async def test_a_pk_round_and_its_penalty_end_when_the_driving_node_is_killed(
    redis_server: RedisServer, start_nodes, open_client
) -> None:
    """n0 starts (and drives) the round and is SIGKILLed mid-round: n1, which holds both rooms'
    viewers, takes the lapsed lease over, keeps pushing the score, ends the round on time with the
    exact result in both rooms, then runs the penalty to its end."""
    n0, n1 = start_nodes(redis_server.url, 2)
    ha = await open_client(n0, "ha", "ra", role="host")
    hb = await open_client(n0, "hb", "rb", role="host")
    va = await open_client(n1, "va", "ra")
    vb = await open_client(n1, "vb", "rb")
    await ha.send(t="link", action="invite", room="rb", cid=1)
    await ha.recv_until(lambda f: f["t"] == "link_ack", TIMEOUT)
    await hb.send(t="link", action="accept", room="ra", cid=1)
    await hb.recv_until(lambda f: f["t"] == "link_ack", TIMEOUT)
    await ha.send(t="link", action="pk", seconds=30, penalty=2, cid=2)
    await ha.recv_until(lambda f: f["t"] == "link_ack", TIMEOUT)
    started = await until_events(va, lambda es: any(e["t"] == "pk_round" and e["on"] for e in es))
    round_on = next(e for e in started if e["t"] == "pk_round")
    assert (round_on["seconds"], round_on["penalty"]) == (30, 2)
    await va.send(t="gift", gift="rose", cid="a0")  # 10 for ra, pushed by n0's driver
    await until_events(vb, lambda es: any(e["t"] == "pk" and e["scores"] == {"ra": 10, "rb": 0} for e in es))

    n0.kill()  # SIGKILL: its lease lapses, nobody tells n1
    await vb.send(t="gift", gift="star", cid="b0")  # 50 for rb, credited by n1
    await vb.send(t="like", count=3)
    want = {"ra": 10, "rb": 53}
    for viewer in (va, vb):  # the score moves on: n1 drives now
        await until_events(viewer, lambda es: any(e["t"] == "pk" and e["scores"] == want for e in es))
    results = []
    for viewer in (va, vb):  # ends on time (30 s after the start), announced by n1
        seen = await until_events(
            viewer, lambda es: any(e["t"] == "pk_penalty" and e["on"] for e in es), 2 * WAIT
        )
        result = next(e for e in seen if e["t"] == "pk_result")
        penalty = next(e for e in seen if e["t"] == "pk_penalty")
        assert result["ts"] >= round_on["ends"] and result["id"] == round_on["id"]
        assert (penalty["loser"], penalty["seconds"], penalty["id"]) == ("ra", 2, round_on["id"])
        results.append(result)
    assert results[0]["scores"] == results[1]["scores"] == want  # exact, equal in both rooms
    assert results[0]["winner"] == "rb"
    for viewer in (va, vb):
        seen = await until_events(viewer, lambda es: any(e["t"] == "pk_penalty" and not e["on"] for e in es))
        off = next(e for e in seen if e["t"] == "pk_penalty")
        assert off["ts"] >= penalty["ends"]
    late = await open_client(n1, "late", "ra")
    assert late.snapshot is not None
    assert (late.snapshot["pk"], late.snapshot["pk_penalty"]) == (None, None)
    assert late.snapshot["link"] is not None  # the link itself lives on
