"""Abuse state shared by nodes through a real Redis: sanctions, DM blocks, join nonces, and
per-user rate limits reconciled across nodes. Two node processes, real WebSocket clients.

Every wait is on a frame, a Redis value or a metric, with a generous timeout; nothing sleeps
and hopes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.broker import redis_scripts as rs
from server.broker.base import Sanction
from server.wire.protocol import ErrorCode
from tests.conftest import WsClient, token
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import WAIT, NodeProc, RedisServer, RedisTarget, apoll, requires_redis

pytestmark = requires_redis

_opened: list[WsClient] = []


@pytest.fixture(autouse=True)
async def _close_clients(start_nodes: Any) -> Any:
    """Close the clients before the nodes stop (depends on start_nodes: torn down first), so a
    node's graceful shutdown does not wait for clients that no longer read."""
    yield
    await asyncio.gather(*(c.close() for c in _opened), return_exceptions=True)
    _opened.clear()


async def join(
    node: NodeProc, user: str, room: str = "r1", role: Any = "viewer", tok: str | None = None
) -> WsClient:
    client = WsClient(await connect(node.ws_url))
    _opened.append(client)
    await client.send(t="join", token=tok or token(room, user, role))
    client.snapshot = await client.recv()
    assert client.snapshot["t"] == "snapshot", client.snapshot
    return client


async def refused(node: NodeProc, tok: str) -> tuple[dict[str, Any], int]:
    """Join and expect an error frame then a close: (error frame, close code)."""
    client = WsClient(await connect(node.ws_url))
    _opened.append(client)
    await client.send(t="join", token=tok)
    error = await client.recv()
    assert error["t"] == "error", error
    return error, await closed(client)


async def closed(client: WsClient) -> int:
    with pytest.raises(ConnectionClosed) as info:
        await client.recv_until(lambda f: False)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def error_with(code: ErrorCode) -> Any:
    return lambda f: f["t"] == "error" and f["code"] == code


async def moderate(mod: WsClient, **frame: Any) -> dict[str, Any]:
    await mod.send(t="mod", **frame)
    return await mod.recv_until(lambda f: f["t"] == "mod_ack" and f["action"] == frame["action"])


# -- sanctions ---------------------------------------------------------------------------------


async def test_ban_on_one_node_closes_and_refuses_on_every_node(redis_any: RedisTarget, start_nodes) -> None:
    a, b = start_nodes(redis_any, 2)
    host = await join(a, "host", role="host")
    troll = await join(b, "troll")
    elsewhere = await join(b, "troll", room="r2")
    await moderate(host, action="ban", uid="troll", reason="spam")
    error = await troll.recv_until(lambda f: f["t"] == "error")
    assert error["code"] == ErrorCode.BANNED and "retry_after" not in error
    assert await closed(troll) == ErrorCode.BANNED  # closed on the other node, at once
    for node in (b, a):  # reconnecting anywhere does not shed it
        error, code = await refused(node, token("r1", "troll"))
        assert error["code"] == code == ErrorCode.BANNED
    await elsewhere.send(t="ping")  # a ban is per room
    await elsewhere.recv_until(lambda f: f["t"] == "pong")
    await moderate(host, action="unban", uid="troll")
    await join(b, "troll")


async def test_kick_cool_down_applies_on_the_other_node(redis_any: RedisTarget, start_nodes) -> None:
    a, b = start_nodes(redis_any, 2)
    mod = await join(a, "mod", role="moderator")
    troll = await join(b, "troll")
    await moderate(mod, action="kick", uid="troll", duration=300)
    assert (await troll.recv_until(lambda f: f["t"] == "error"))["code"] == ErrorCode.KICKED
    assert await closed(troll) == ErrorCode.KICKED
    error, code = await refused(b, token("r1", "troll"))
    assert error["code"] == code == ErrorCode.KICKED and 0 < error["retry_after"] <= 300


async def test_mute_on_one_node_applies_on_the_other(redis_any: RedisTarget, start_nodes) -> None:
    a, b = start_nodes(redis_any, 2)
    host = await join(a, "host", role="host")
    troll = await join(b, "troll")
    ack = await moderate(host, action="mute", uid="troll", duration=600)
    notice = await troll.recv_until(lambda f: f["t"] == "notice")
    assert notice["action"] == "mute" and notice["until"] == ack["until"]
    await troll.send(t="danmaku", text="hello?", cid="m1")
    err = await troll.recv_until(error_with(ErrorCode.MUTED))
    assert err["ref"] == "m1" and 0 < err["retry_after"] <= 600
    await troll.close()
    troll = await join(b, "troll")  # reconnecting does not shed it either
    await troll.send(t="danmaku", text="again?")
    await troll.recv_until(error_with(ErrorCode.MUTED))
    await moderate(host, action="unmute", uid="troll")
    await troll.recv_until(lambda f: f["t"] == "notice" and f["action"] == "unmute")
    await troll.send(t="danmaku", text="sorry")
    await host.events(lambda e: e["t"] == "danmaku" and e["uid"] == "troll", 1)


# -- DM blocks and join nonces -------------------------------------------------------------------


async def test_dm_block_set_on_one_node_refuses_dms_sent_from_another(
    redis_any: RedisTarget, start_nodes
) -> None:
    a, b = start_nodes(redis_any, 2)
    viewer = await join(a, "viewer")
    creep = await join(b, "creep")
    await viewer.send(t="block", uid="creep", cid="b")
    assert (await viewer.recv_until(lambda f: f["t"] == "block_ack"))["blocked"] is True
    await creep.send(t="dm", to="viewer", text="hey", cid=5)
    assert (await creep.recv_until(error_with(ErrorCode.DM_BLOCKED)))["ref"] == 5
    await viewer.send(t="unblock", uid="creep")
    await viewer.recv_until(lambda f: f["t"] == "block_ack" and not f["blocked"])
    await creep.send(t="dm", to="viewer", text="sorry")
    assert (await viewer.recv_until(lambda f: f["t"] == "dm"))["text"] == "sorry"


async def test_one_time_token_used_on_one_node_is_refused_on_another(
    redis_any: RedisTarget, start_nodes
) -> None:
    a, b = start_nodes(redis_any, 2, "--join-nonce")
    once = token("r1", "mallory")
    await join(a, "mallory", tok=once)
    error, code = await refused(b, once)
    assert error["code"] == code == ErrorCode.TOKEN_REPLAYED
    error, code = await refused(a, once)
    assert error["code"] == code == ErrorCode.TOKEN_REPLAYED
    await join(b, "mallory")  # a fresh token is fine


# -- per-user rate limit across nodes --------------------------------------------------------------

RATE, BURST = 0.05, 6  # a refill too slow to matter: the bound is about the burst


async def outcomes(client: WsClient, cids: list[str]) -> tuple[list[str], list[str]]:
    """Send one danmaku per cid and wait for each one's fate: (accepted, rate-limited)."""
    for cid in cids:
        await client.send(t="danmaku", text=f"spam {cid}", cid=cid)
    pending, accepted, limited = set(cids), [], []
    async with asyncio.timeout(WAIT):
        while pending:
            frame = await client.recv(WAIT)
            if frame["t"] == "batch":
                for event in frame["events"]:
                    if event["t"] == "danmaku" and event.get("cid") in pending:
                        pending.discard(event["cid"])
                        accepted.append(event["cid"])
            elif frame["t"] == "error" and frame.get("ref") in pending:
                assert frame["code"] == ErrorCode.RATE_LIMITED, frame
                pending.discard(frame["ref"])
                limited.append(frame["ref"])
    return accepted, limited


async def test_user_rate_limit_is_shared_by_nodes(redis_server: RedisServer, start_nodes) -> None:
    a, b = start_nodes(
        redis_server.url, 2, "--rate-limits", f"danmaku.user={RATE}/{BURST},danmaku.conn=100/100"
    )
    on_a, on_b = await join(a, "spam"), await join(b, "spam")
    with redis_server.client() as r:

        def spent() -> float:
            return float(r.get("lr:{u:spam}:rl:danmaku") or 0)

        async def redis_total(at_least: float) -> None:
            await apoll(lambda: asyncio.to_thread(lambda: spent() >= at_least), what="usage in redis")

        started = time.monotonic()
        # B spends once: from now on B exchanges this user's usage every second
        assert await outcomes(on_b, ["b0"]) == (["b0"], [])
        await redis_total(1)
        # A knows nothing yet: it allows its own burst, then refuses
        accepted_a, limited_a = await outcomes(on_a, [f"a{i}" for i in range(BURST + 2)])
        assert limited_a and len(accepted_a) <= BURST + 1
        # wait until A reported it and B ran two exchanges after that (one may have been under way)
        await redis_total(1 + len(accepted_a))
        done = await asyncio.to_thread(b.metric, "liveroom_broker_usage_exchanges_total")
        await apoll(
            lambda: asyncio.to_thread(lambda: b.metric("liveroom_broker_usage_exchanges_total") >= done + 2),
            what="two exchanges on B",
        )
        # B debited A's burst: without the exchange it would still allow BURST - 1
        accepted_b, limited_b = await outcomes(on_b, ["b1", "b2", "b3"])
        elapsed = time.monotonic() - started
    refill = RATE * elapsed
    assert len(accepted_b) <= refill and len(limited_b) >= 3 - refill
    total = 1 + len(accepted_a) + len(accepted_b)
    # the design's bound: one burst plus the refill, plus what B spent before A first reported
    assert total <= BURST + refill + 1


# -- the broker itself (in process) -------------------------------------------------------------------


async def test_broker_sanctions_expire_and_reach_every_watcher(redis_server: RedisServer) -> None:
    from server.broker.redis import RedisBroker

    brokers = [RedisBroker(redis_server.url, f"b{i}") for i in range(2)]
    seen: list[list[Sanction]] = [[], []]
    try:
        for i, broker in enumerate(brokers):
            broker.watch_sanctions(seen[i].append)
            await broker.start()
        lifetime = 600_000  # ms: read back long before it ends, however slow the machine
        mute = Sanction("room", "u1", "mute", int(time.time() * 1000) + lifetime, "host")
        ban = Sanction("room", "u1", "ban", None, "host")
        await brokers[0].put_sanction(mute)
        await brokers[0].put_sanction(ban)
        assert seen[0] == [mute, ban]  # the putting node applies it at once, and only once
        await apoll(lambda: seen[1] == [mute, ban], what="sanctions on the other broker")
        assert await brokers[1].sanctions("room", "u1") == [ban, mute]
        assert await brokers[1].sanctions("other-room", "u1") == []
        key = "lr:{r:room}:sx:u1:mute"
        with redis_server.client() as r:
            # the mute's lifetime is Redis' TTL on its key (the ban has none), so Redis ends it;
            # the test does not wait those 10 minutes: it ends the TTL early and waits for that
            assert 0 < r.pttl(key) <= lifetime and r.pttl("lr:{r:room}:sx:u1:ban") == -1
            assert r.pexpire(key, 1)
            await apoll(lambda: asyncio.to_thread(lambda: r.exists(key) == 0), what="expiry")
        assert await brokers[1].sanctions("room", "u1") == [ban]
        lifted = Sanction("room", "u1", "ban", None, "host", lifted=True)
        await brokers[1].put_sanction(lifted)
        await apoll(lambda: seen[0][-1] == lifted, what="the lift")
        assert await brokers[0].sanctions("room", "u1") == []
    finally:
        for broker in brokers:
            await broker.close()


def _mget_calls(target: RedisTarget) -> int:
    """MGETs Redis has served so far (summed over a cluster's primaries): a sanctions read."""
    with target.server.client() as r:
        if target.cluster:
            stats = r.info("commandstats", target_nodes=r.PRIMARIES).values()
        else:
            stats = [r.info("commandstats")]
        return sum(s.get("cmdstat_mget", {}).get("calls", 0) for s in stats)


async def test_open_room_checks_sanctions_from_memory(redis_any: RedisTarget) -> None:
    """A node that opened a room loads its sanctions once, keeps them current from the
    sanctions channel, and answers a join's check with no Redis read; a closed room reads."""
    from server.broker.redis import RedisBroker

    one = RedisBroker(redis_any.url, "b0", cluster=redis_any.cluster)
    two = RedisBroker(redis_any.url, "b1", cluster=redis_any.cluster)
    known: list[Sanction] = []
    try:
        await one.start()
        await two.start()
        two.watch_sanctions(known.append)
        now = int(time.time() * 1000)
        ban = Sanction("hall", "u1", "ban", None, "host")
        mute = Sanction("hall", "u2", "mute", now + 600_000, "host")
        gone = Sanction("hall", "u4", "mute", now + 1, "host")  # expired before the room opens
        for sanction in (ban, mute, gone):
            await one.put_sanction(sanction)
        await apoll(lambda: gone in known, what="the sanctions on b1")
        await two.subscribe("hall", lambda *_: None)  # the node opens the room
        reads = _mget_calls(redis_any)
        assert await two.sanctions("hall", "u1") == [ban]
        assert await two.sanctions("hall", "u2") == [mute]
        assert await two.sanctions("hall", "u4") == []
        kick = Sanction("hall", "u3", "kick", now + 600_000, "host")
        await one.put_sanction(kick)
        await apoll(lambda: kick in known, what="a sanction put after the room opened")
        assert await two.sanctions("hall", "u3") == [kick]
        lift = Sanction("hall", "u1", "ban", None, "host", lifted=True)
        await one.put_sanction(lift)
        await apoll(lambda: lift in known, what="the lift")
        assert await two.sanctions("hall", "u1") == []
        assert _mget_calls(redis_any) == reads  # every answer came from memory
        await two.unsubscribe("hall")
        assert await two.sanctions("hall", "u2") == [mute]  # a closed room: read from Redis
        assert _mget_calls(redis_any) > reads
    finally:
        await one.close()
        await two.close()


async def test_held_sanctions_are_loaded_again_after_a_reconnect(redis_server: RedisServer) -> None:
    """What a node holds is only as good as the channel: after losing its connection (and so
    maybe a sanction message) it loads every open room's sanctions again."""
    from server.broker.redis import RedisBroker

    node = RedisBroker(redis_server.url, "b0")
    try:
        await node.start()
        await node.subscribe("hall", lambda *_: None)
        assert await node.sanctions("hall", "u1") == []
        with redis_server.client() as r:  # stored, but its message never sent: a missed message
            r.set("lr:{r:hall}:sx:u1:ban", rs.pack_sanction(Sanction("hall", "u1", "ban", None, "x"), "x"))
            r.zadd("lr:{r:hall}:sxi", {"u1:ban": float("inf")})
            assert r.client_kill_filter(_type="pubsub") >= 1
        target = RedisTarget(redis_server.url, False, redis_server)

        async def held_ban() -> bool:  # answered from memory, and with the ban
            reads = _mget_calls(target)
            found = await node.sanctions("hall", "u1")
            return bool(found) and found[0].kind == "ban" and _mget_calls(target) == reads

        await apoll(held_ban, what="the ban loaded again after the reconnect")
    finally:
        await node.close()


async def test_broker_usage_exchange_reports_only_the_others_spending(redis_any: RedisTarget) -> None:
    from server.broker.redis import RedisBroker

    one, two = (
        RedisBroker(redis_any.url, "b0", cluster=redis_any.cluster),
        RedisBroker(redis_any.url, "b1", cluster=redis_any.cluster),
    )
    try:
        await one.start()
        await two.start()
        assert await one.exchange_usage({"danmaku|u": 2.0}) == {}  # first sight: a baseline
        assert await two.exchange_usage({"danmaku|u": 0.0}) == {}
        assert await one.exchange_usage({"danmaku|u": 3.0, "like|u": 1.0}) == {}
        assert await two.exchange_usage({"danmaku|u": 1.0, "like|u": 0.0}) == {"danmaku|u": 3.0}
        assert await one.exchange_usage({"danmaku|u": 0.0, "like|u": 0.0}) == {"danmaku|u": 1.0}
        assert await two.exchange_usage({"like|u": 0.0}) == {}
        assert await two.exchange_usage({}) == {}
        assert await two.exchange_usage({"danmaku|u": 0.0}) == {}  # forgotten: a new baseline
    finally:
        await one.close()
        await two.close()


async def test_outage_fails_open_but_keeps_known_bans(redis_server: RedisServer) -> None:
    from server.broker.base import BrokerUnavailable
    from server.broker.redis import RedisBroker

    one, two = RedisBroker(redis_server.url, "b0"), RedisBroker(redis_server.url, "b1")
    try:
        await one.start()
        await two.start()
        ban = Sanction("room", "u1", "ban", None, "host")
        known: list[Sanction] = []
        two.watch_sanctions(known.append)  # what the node's Moderation is told
        await one.put_sanction(ban)
        await apoll(lambda: ban in known, what="ban seen by b1")
        redis_server.stop()
        await apoll(lambda: not two.ready, what="b1 notices the outage")
        assert await two.sanctions("room", "u1") == [ban]  # what this node saw still applies
        assert await two.sanctions("room", "u2") == []  # the rest fails open
        assert await two.dm_blocked("u1", "u2") is False
        assert await two.claim_nonce("jti-0000001", 60) is True
        assert await two.claim_nonce("jti-0000001", 60) is False  # not twice on this node
        assert await two.exchange_usage({"danmaku|u1": 1.0}) == {}
        with pytest.raises(BrokerUnavailable):
            await two.put_sanction(Sanction("room", "u2", "mute", None, "host"))
        with pytest.raises(BrokerUnavailable):
            await two.set_dm_block("u1", "u2", True)
    finally:
        await one.close()
        await two.close()
