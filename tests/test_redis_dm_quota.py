"""The Redis broker's per-sender DM quota (issue #24), on one Redis and on a 3+3 cluster: one
sender fills its own quota, never anyone else's; reading, the recipient's cap and a refusal
free it; an online recipient still gets the DM live (not kept); an offline one is refused 4502,
and the refused DM's `cid` is free for the retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.broker import redis_scripts as rs
from server.broker.base import dm_id_key
from server.broker.redis import RedisBroker
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisTarget, apoll, requires_redis

pytestmark = requires_redis


@pytest.fixture
async def brokers(redis_any: RedisTarget) -> AsyncIterator[list[RedisBroker]]:
    """Two nodes' brokers: quota 3 DMs per sender, 2 kept per recipient."""
    made = [
        RedisBroker(redis_any.url, f"b{i}", cluster=redis_any.cluster, dm_keep=2, dm_per_sender=3)
        for i in range(2)
    ]
    try:
        for broker in made:
            await broker.start()
        yield made
    finally:
        for broker in made:
            await broker.close()


def _count(target: RedisTarget, key: str, kind: str = "zcard") -> int:
    with target.server.client() as r:
        return int(getattr(r, kind)(key))


def _dm(sender: str, text: str = "x") -> dict[str, Any]:
    return {"t": "dm", "from": sender, "name": sender, "text": text, "ts": protocol.now_ms()}


async def test_one_sender_fills_its_own_quota_on_redis(
    redis_any: RedisTarget, brokers: list[RedisBroker]
) -> None:
    one, _ = brokers
    quota = rs.user_keys("spammer").dm_quota
    recipients = [f"u{i}" for i in range(5)]
    if redis_any.cluster:  # the point: the quota and the streams live on other shards
        shards = {redis_any.server.primary_of(rs.user_keys(u).dms) for u in recipients}
        assert shards - {redis_any.server.primary_of(quota)}, shards
    receipts = [await one.store_dm(u, _dm("spammer")) for u in recipients[:3]]
    assert not any(r.delivered for r in receipts)
    assert _count(redis_any, quota) == 3
    with pytest.raises(ProtocolError) as info:
        await one.store_dm("u3", _dm("spammer"))
    assert info.value.code == ErrorCode.DM_STORE_FULL and "3 of your DMs" in info.value.message
    assert info.value.retry_after == 60
    assert _count(redis_any, rs.user_keys("u3").dms, "xlen") == 0  # nothing stored
    assert not (await one.store_dm("u3", _dm("alice"))).delivered  # another sender: stored
    await one.ack_dm("u0", receipts[0].id)  # u0 read it: the spammer may store one more
    assert _count(redis_any, quota) == 2
    await one.store_dm("u4", _dm("spammer"))
    assert _count(redis_any, quota) == 3


async def test_the_recipients_cap_frees_the_quota_of_the_dm_it_pushes_out(
    redis_any: RedisTarget, brokers: list[RedisBroker]
) -> None:
    one, _ = brokers
    for n in range(3):  # 2 kept per recipient: s0's DM is pushed out by s2's
        await one.store_dm("busy", _dm(f"s{n}", f"t{n}"))
    kept = [protocol.unpack(f)["text"] for f in await one.dm_backlog("busy")]
    assert kept == ["t1", "t2"]
    assert [_count(redis_any, rs.user_keys(f"s{n}").dm_quota) for n in range(3)] == [0, 1, 1]
    for _ in range(3):  # s0 has its whole quota again
        await one.store_dm("elsewhere", _dm("s0"))


async def test_a_full_quota_still_delivers_live_to_an_online_user(
    redis_any: RedisTarget, brokers: list[RedisBroker]
) -> None:
    one, two = brokers
    for u in ("off1", "off2", "off3"):
        await one.store_dm(u, _dm("spammer"))  # the spammer's quota is full
    live: list[dict[str, Any]] = []
    assert await two.subscribe_user("online", lambda _u, f: live.append(protocol.unpack(f))) == []
    receipt = await one.store_dm("online", _dm("spammer", "live only"))
    assert receipt.delivered and receipt.replicated
    await apoll(lambda: len(live) == 1, what="the DM on the recipient's node")
    assert live[0]["text"] == "live only" and live[0]["id"] == receipt.id
    assert await one.dm_backlog("online") == []  # not kept: no durability promise
    stored = await one.store_dm("online", _dm("alice", "kept"))  # ids stay ordered per recipient
    assert dm_id_key(stored.id) > dm_id_key(receipt.id)
    await apoll(lambda: len(live) == 2, what="alice's DM")
    assert [protocol.unpack(f)["text"] for f in await one.dm_backlog("online")] == ["kept"]
    assert _count(redis_any, rs.user_keys("spammer").dm_quota) == 3
    with pytest.raises(ProtocolError) as info:
        await one.store_dm("off4", _dm("spammer"))  # offline: refused, nothing kept or sent
    assert info.value.code == ErrorCode.DM_STORE_FULL
    assert _count(redis_any, rs.user_keys("off4").dms, "xlen") == 0


async def test_a_refused_dm_is_retried_with_its_cid_once_the_quota_frees(
    redis_any: RedisTarget, start_nodes, open_client
) -> None:
    """Over the socket: 4502 names the limit and frees the cid; the recipient reads its DM
    (dm_seen), which frees the quota, and the retry with the same cid is stored."""
    (node,) = start_nodes(redis_any, 1, "--dm-store-per-sender", "1")
    alice = await open_client(node, "alice")
    await alice.send(t="dm", to="carol", text="first", cid="c1")
    first = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
    assert first["t"] == "dm_ack" and first["delivered"] is False, first
    await alice.send(t="dm", to="dave", text="second", cid="c2")
    refused = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
    assert refused["t"] == "error" and refused["code"] == 4502 and refused["ref"] == "c2", refused
    assert "1 of your DMs are waiting to be read" in refused["msg"] and refused["retry_after"] == 60
    carol = await open_client(node, "carol")
    got = await carol.recv_until(lambda f: f["t"] == "dm")
    await carol.send(t="dm_seen", id=got["id"])
    quota = rs.user_keys("alice").dm_quota
    await apoll(lambda: asyncio.to_thread(lambda: _count(redis_any, quota) == 0), what="the quota freed")
    await alice.send(t="dm", to="dave", text="second", cid="c2")
    ack = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
    assert ack["t"] == "dm_ack" and ack["cid"] == "c2", ack
    assert _count(redis_any, rs.user_keys("dave").dms, "xlen") == 1
