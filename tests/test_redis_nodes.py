"""Several node processes sharing rooms through a real Redis: order, presence, likes, DMs, recovery."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.broker.base import Publish
from tests.conftest import WsClient
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, RedisTarget, apoll, requires_redis

pytestmark = requires_redis


class Collector:
    """Every batch event a viewer receives after its snapshot, checked for gaps as it goes."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        assert client.snapshot is not None
        self.seq = client.snapshot["seq"]
        self.events: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []

    async def until(self, pred: Any, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred(self):
                frame = await self.client.recv(timeout)
                self.frames.append(frame)
                if frame["t"] != "batch":
                    continue
                for event in frame["events"]:
                    assert event["seq"] == self.seq + 1, f"gap or duplicate: {self.seq} then {event['seq']}"
                    self.seq = event["seq"]
                    self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["t"] == kind]


async def test_cross_node_danmaku_order_and_completeness(redis_any: RedisTarget, start_nodes, open_client):
    nodes = start_nodes(redis_any, 3)
    viewers = [await open_client(node, f"v{n}{i}") for n, node in enumerate(nodes) for i in range(2)]
    senders = [await open_client(node, f"s{n}") for n, node in enumerate(nodes)]
    per_sender = 40
    collectors = [Collector(c) for c in viewers]

    async def talk(n: int, sender: WsClient) -> None:
        for i in range(per_sender):
            await sender.send(t="danmaku", text=f"s{n}-{i}")
            if i % 10 == 9:
                await asyncio.sleep(0)  # interleave the three senders

    await asyncio.gather(*(talk(n, s) for n, s in enumerate(senders)))
    total = per_sender * len(senders)
    await asyncio.gather(*(c.until(lambda c: len(c.of("danmaku")) >= total) for c in collectors))
    reference = [(e["seq"], e["text"]) for e in collectors[0].of("danmaku")]
    for collector in collectors:
        got = [(e["seq"], e["text"]) for e in collector.of("danmaku")]
        assert got == reference  # same events, same order, on every node
    texts = [text for _, text in reference]
    assert len(set(texts)) == total  # every message exactly once
    for n in range(len(senders)):
        assert [t for t in texts if t.startswith(f"s{n}-")] == [f"s{n}-{i}" for i in range(per_sender)]


def _online(c: Collector) -> int | None:
    found = c.of("presence")
    return found[-1]["online"] if found else None


async def test_presence_converges_after_joins_leaves_and_sigkill(
    redis_any: RedisTarget, start_nodes, open_client
):
    n0, n1, n2 = start_nodes(redis_any, 3)
    watcher = Collector(await open_client(n0, "watcher"))
    on1 = [await open_client(n1, f"a{i}") for i in range(2)]
    for i in range(3):
        await open_client(n2, f"b{i}")
    await watcher.until(lambda c: _online(c) == 6)
    assert watcher.of("presence")[-1]["unique"] == 6
    await on1[0].close()
    await watcher.until(lambda c: _online(c) == 5)
    n2.kill()  # SIGKILL: no goodbye; its heartbeat expires (presence TTL 1.5 s)
    await watcher.until(lambda c: _online(c) == 2)
    assert watcher.of("presence")[-1]["unique"] == 6  # they were here
    late = await open_client(n1, "late")
    assert late.snapshot["online"] == 2 and late.snapshot["unique"] == 6


async def test_likes_sum_exactly_across_nodes(redis_any: RedisTarget, start_nodes, open_client):
    nodes = start_nodes(redis_any, 3)
    watchers = [Collector(await open_client(node, f"w{n}")) for n, node in enumerate(nodes)]
    likers = [await open_client(node, f"l{n}{i}") for n, node in enumerate(nodes) for i in range(3)]
    rounds, count = 30, 7
    for _ in range(rounds):
        for liker in likers:
            await liker.send(t="like", count=count)
    expected = rounds * count * len(likers)

    def done(c: Collector) -> bool:
        likes = c.of("likes")
        return bool(likes) and likes[-1]["total"] >= expected

    await asyncio.gather(*(w.until(done) for w in watchers))
    for watcher in watchers:
        assert watcher.of("likes")[-1]["total"] == expected
    late = await open_client(nodes[1], "late")
    assert late.snapshot["likes"] == expected


async def test_dm_reaches_user_connected_on_two_nodes(redis_any: RedisTarget, start_nodes, open_client):
    n0, n1, n2 = start_nodes(redis_any, 3)
    bob_a = await open_client(n0, "bob", room="ra")
    bob_b = await open_client(n1, "bob", room="rb")
    alice = await open_client(n2, "alice", room="rc")
    await alice.send(t="dm", to="bob", text="hi bob", cid=1)
    ack = await alice.recv_until(lambda f: f["t"] == "dm_ack")
    assert ack["delivered"] is True and ack["cid"] == 1
    for bob in (bob_a, bob_b):
        dm = await bob.recv_until(lambda f: f["t"] == "dm")
        assert (dm["id"], dm["from"], dm["text"]) == (ack["id"], "alice", "hi bob")


async def test_offline_dm_backlog_in_order_and_acked(redis_any: RedisTarget, start_nodes, open_client):
    n0, n1, n2 = start_nodes(redis_any, 3)
    alice = await open_client(n0, "alice")
    acks = []
    for text in ("one", "two", "three"):
        await alice.send(t="dm", to="carol", text=text)
        acks.append(await alice.recv_until(lambda f: f["t"] == "dm_ack"))
    assert [a["delivered"] for a in acks] == [False] * 3
    carol = await open_client(n1, "carol", room="elsewhere")
    dms = [await carol.recv_until(lambda f: f["t"] == "dm") for _ in range(3)]
    assert [(d["text"], d["id"]) for d in dms] == [
        (t, a["id"]) for t, a in zip(("one", "two", "three"), acks, strict=True)
    ]
    await carol.send(t="dm_seen", id=dms[1]["id"])  # read up to "two"
    await carol.send(t="ping")
    await carol.recv_until(lambda f: f["t"] == "pong")  # frames are handled in order: the ack is done
    await carol.close()
    again = await open_client(n2, "carol", room="elsewhere")
    assert (await again.recv_until(lambda f: f["t"] == "dm"))["text"] == "three"
    await again.send(t="dm_seen", id=dms[2]["id"])
    await again.send(t="ping")
    await again.recv_until(lambda f: f["t"] == "pong")
    await again.close()
    third = await open_client(n0, "carol", room="elsewhere")
    await alice.send(t="dm", to="carol", text="four")
    # nothing acknowledged comes back: the first DM this connection sees is the new one
    assert (await third.recv_until(lambda f: f["t"] == "dm"))["text"] == "four"


async def test_a_retry_whose_claim_was_lost_gets_the_first_id(
    redis_any: RedisTarget, start_nodes, open_client
):
    """The sender's claim lives on the sender's slot and the DM on the recipient's: a failover
    can lose the claim's answer and keep the DM. The recipient has read and acknowledged it, so
    the backlog no longer holds it either. The retry, through another node, still gets the
    first id, and the recipient nothing twice: the store recorded the send with the DM."""
    from server.broker.idempotency import key_of

    n0, n1 = start_nodes(redis_any, 2)
    carol = await open_client(n1, "carol", room="elsewhere")
    alice = await open_client(n0, "alice")
    await alice.send(t="dm", to="carol", text="once", cid="c-1")
    ack = await alice.recv_until(lambda f: f["t"] == "dm_ack")
    dm = await carol.recv_until(lambda f: f["t"] == "dm")
    assert (dm["id"], dm["text"]) == (ack["id"], "once")
    await carol.send(t="dm_seen", id=dm["id"])
    await carol.send(t="ping")
    await carol.recv_until(lambda f: f["t"] == "pong")  # handled in order: acknowledged
    with redis_any.server.client() as r:
        assert r.delete(key_of("alice", "dm", "c-1")) == 1  # the claim and its answer, lost
    again = await open_client(n1, "alice", room="r2")
    await again.send(t="dm", to="carol", text="once", cid="c-1")
    retry = await again.recv_until(lambda f: f["t"] in ("dm_ack", "error"))
    assert (retry["t"], retry["id"], retry["ts"], retry["cid"]) == ("dm_ack", ack["id"], ack["ts"], "c-1")
    await again.send(t="dm", to="carol", text="next", cid="c-2")
    await again.recv_until(lambda f: f["t"] == "dm_ack")
    nxt = await carol.recv_until(lambda f: f["t"] == "dm")  # in order: a second "once" comes first
    assert nxt["text"] == "next"


async def test_acked_dm_survives_sigkill_of_recipient_node(redis_any: RedisTarget, start_nodes, open_client):
    n0, n1, n2 = start_nodes(redis_any, 3)
    carol = await open_client(n1, "carol")
    alice = await open_client(n0, "alice")
    await alice.send(t="dm", to="carol", text="don't lose me")
    ack = await alice.recv_until(lambda f: f["t"] == "dm_ack")
    n1.kill()
    await carol.close()
    back = await open_client(n2, "carol")
    dm = await back.recv_until(lambda f: f["t"] == "dm")
    assert (dm["id"], dm["text"]) == (ack["id"], "don't lose me")


async def test_recover_on_another_node_after_sigkill(redis_any: RedisTarget, start_nodes, open_client):
    n0, n1, n2 = start_nodes(redis_any, 3)
    viewer = await open_client(n0, "viewer")
    talker = await open_client(n1, "talker")
    await talker.send(t="danmaku", text="before")
    seen = Collector(viewer)
    await seen.until(lambda c: any(e.get("text") == "before" for e in c.events))
    epoch, seq = viewer.snapshot["epoch"], seen.seq
    n0.kill()
    await viewer.close()
    for i in range(5):
        await talker.send(t="danmaku", text=f"m{i}")
    await talker.events(lambda e: e.get("text") == "m4", 1)
    back = await open_client(n2, "viewer", resume={"epoch": epoch, "seq": seq})
    snap = back.snapshot
    assert snap["recovered"] is True and snap["epoch"] == epoch
    missed = snap["missed"]
    assert [e["seq"] for e in missed] == list(range(seq + 1, snap["seq"] + 1))  # no gap
    assert [e["text"] for e in missed if e["t"] == "danmaku"] == [f"m{i}" for i in range(5)]
    await talker.send(t="danmaku", text="after")
    live = Collector(back)  # continues right after the snapshot's seq: no duplicate
    await live.until(lambda c: any(e.get("text") == "after" for e in c.events))


async def test_recovery_refused_when_too_old(redis_server: RedisServer, start_nodes, open_client):
    n0, n1 = start_nodes(redis_server.url, 2, "--history-size", "10", "--recent-size", "5")
    viewer = await open_client(n0, "viewer")
    epoch, seq = viewer.snapshot["epoch"], viewer.snapshot["seq"]
    await viewer.close()
    talker = await open_client(n1, "talker")
    for i in range(30):
        await talker.send(t="danmaku", text=f"m{i}")
    await talker.events(lambda e: e.get("text") == "m29", 1)
    back = await open_client(n1, "viewer", resume={"epoch": epoch, "seq": seq})
    snap = back.snapshot
    assert snap["recovered"] is False and "missed" not in snap
    assert [e["text"] for e in snap["recent"]] == [f"m{i}" for i in range(25, 30)]  # a fresh snapshot
    stranger = await open_client(n0, "viewer2", resume={"epoch": "not-this-one", "seq": 1})
    assert stranger.snapshot["recovered"] is False


async def test_undecodable_redis_message_is_counted_and_dropped(
    redis_server: RedisServer, start_nodes, open_client
):
    (node,) = start_nodes(redis_server.url, 1)
    viewer = await open_client(node, "viewer")
    with redis_server.client() as client:
        for junk in (b"garbage", b"e|\xc1\xc1", b"e|" + b"\x93\x01\x02\x03"):
            client.publish("lr:{r:r1}:ch", junk)
        client.publish("lr:{u:viewer}:ch", b"b1-0|\xc1")
    await apoll(lambda: asyncio.to_thread(lambda: node.metric("liveroom_broker_bad_messages_total") >= 4))
    assert node.alive
    await viewer.send(t="danmaku", text="still fine")
    await viewer.events(lambda e: e.get("text") == "still fine", 1)


async def test_redis_restart_mid_traffic(persistent_redis: RedisServer, start_nodes, open_client):
    n0, n1 = start_nodes(persistent_redis.url, 2)
    watcher = await open_client(n0, "watcher")
    talker = await open_client(n1, "talker")
    acked = []
    for i in range(3):
        await talker.send(t="dm", to="carol", text=f"dm{i}")
        acked.append(await talker.recv_until(lambda f: f["t"] == "dm_ack"))
    chatter = asyncio.create_task(_chatter(talker))
    try:
        await watcher.events(lambda e: e.get("t") == "danmaku", 3)  # traffic is flowing
        persistent_redis.stop()
        await asyncio.gather(n0.wait_ready(False), n1.wait_ready(False))
    finally:
        chatter.cancel()
    # Redis is down: local viewers still get local danmaku; DMs get a retryable error
    await talker.send(t="danmaku", text="during the outage")
    await talker.events(lambda e: e.get("text") == "during the outage", 1)
    await talker.send(t="dm", to="carol", text="not stored", cid="x")
    err = await talker.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
    assert err["t"] == "error" and err["code"] == 4501 and err["ref"] == "x" and err["retry_after"] > 0
    persistent_redis.start()
    await asyncio.gather(n0.wait_ready(True), n1.wait_ready(True))
    assert n0.alive and n1.alive
    # resubscribed: a new pair of clients talks across the two nodes again
    w2 = await open_client(n0, "watcher2")
    t2 = await open_client(n1, "talker2")
    await t2.send(t="danmaku", text="back")
    await w2.events(lambda e: e.get("text") == "back", 1)
    await t2.send(t="dm", to="carol", text="dm3")
    acked.append(await t2.recv_until(lambda f: f["t"] == "dm_ack"))
    carol = await open_client(n0, "carol", room="home")
    dms = [await carol.recv_until(lambda f: f["t"] == "dm") for _ in range(4)]
    assert [d["id"] for d in dms] == [a["id"] for a in acked]  # every acked DM, none lost


async def _chatter(client: WsClient) -> None:
    i = 0
    while True:
        await client.send(t="danmaku", text=f"c{i}")
        i += 1
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("sharded", [False, True])
async def test_broker_pair_in_process(redis_server: RedisServer, sharded: bool) -> None:
    """Two brokers in one process: plain and sharded pub/sub (SSUBSCRIBE/SPUBLISH) paths."""
    from server.broker.redis import RedisBroker

    brokers = [RedisBroker(redis_server.url, f"b{i}", sharded=sharded) for i in range(2)]
    got: list[list[list[dict[str, Any]]]] = [[], []]
    try:
        for i, broker in enumerate(brokers):
            await broker.start()
            assert broker.ready
            await broker.subscribe("room", lambda _r, _e, _f, events, i=i: got[i].append(events))
        event = {"t": "danmaku", "uid": "u", "name": "u", "ts": 1, "text": "x"}
        await brokers[0].publish(Publish("room", [dict(event)], 2, 1, 1))
        await brokers[1].publish(Publish("room", [dict(event)], 3, 1, 1))
        await apoll(lambda: all(sum(len(b) for b in g) >= 6 for g in got))
        for batches in got:
            events = [e for batch in batches for e in batch]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert [e["total"] for e in events if e["t"] == "likes"] == [2, 5]
    finally:
        for broker in brokers:
            await broker.close()


async def test_state_loaded_on_subscribe_honours_sticky_and_deletes(redis_any: RedisTarget) -> None:
    """A node opening a room reads hosts, recent danmaku (minus deleted ones) in one round trip."""
    from server.broker.redis import RedisBroker

    first, second = (
        RedisBroker(redis_any.url, "b0", cluster=redis_any.cluster),
        RedisBroker(redis_any.url, "b1", cluster=redis_any.cluster),
    )
    try:
        await first.start()
        await second.start()
        await first.subscribe("room", lambda *_: None)
        said = [{"t": "danmaku", "uid": "u", "name": "u", "ts": 1, "text": f"d{i}"} for i in range(3)]
        host = {"t": "host", "uid": "h", "name": "Hana", "ts": 1, "live": True}
        await first.publish(Publish("room", [*said, host], 0, 2, 1, joined=["u", "h"]))
        await first.publish(
            Publish("room", [{"t": "delete", "uid": "h", "name": "Hana", "ts": 2, "target": 2}], 0, None, 2)
        )
        state = await second.subscribe("room", lambda *_: None)
        assert [e["text"] for e in state.recent] == ["d0", "d2"]
        assert state.hosts == {"h": "Hana"} and state.online == 2 and state.unique == 2
        assert state.seq == 6  # 3 danmaku, host, presence, delete
    finally:
        await first.close()
        await second.close()
