"""A real 3+3 Redis Cluster losing a primary under traffic: a replica takes over, the nodes
follow the new topology by themselves, no acknowledged DM is lost, and no viewer sees a
silent gap (its events stay consecutive, or it is told: an in-band snapshot of the reset room,
rarely a 1012 close)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest
import redis
from redis.exceptions import RedisClusterException
from websockets.exceptions import ConnectionClosed

from server.broker import redis as redis_broker
from server.broker import redis_sturdy
from server.broker.base import Publish
from server.broker.redis import RedisBroker
from server.deadline import within
from server.logs import Throttle
from server.metrics import broker_disconnects
from server.wire.protocol import now_ms
from tests import prom
from tests.conftest import WsClient
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import WAIT, RedisClusterServer, apoll, requires_redis

pytestmark = requires_redis


class Watch:
    """A viewer's events after its snapshot; fails on a gap, counts the in-band snapshots of a
    room reset (told: it carries on from their seq), stops at a close (1012: told to rejoin)."""

    def __init__(self, client: WsClient) -> None:
        assert client.snapshot is not None
        self.client = client
        self.seq = client.snapshot["seq"]
        self.texts: list[str] = []
        self.resets = 0
        self.closed: int | None = None

    async def run(self) -> None:
        try:
            while True:
                frame = await self.client.recv(WAIT * 4)
                if frame["t"] == "snapshot":
                    assert frame["reset"] is True and frame["recovered"] is False, frame
                    self.resets += 1
                    self.seq = frame["seq"]
                    continue
                if frame["t"] != "batch":
                    continue
                for event in frame["events"]:
                    assert event["seq"] == self.seq + 1, f"silent gap: {self.seq} then {event['seq']}"
                    self.seq = event["seq"]
                    if event["t"] == "danmaku":
                        self.texts.append(event["text"])
        except ConnectionClosed as exc:
            self.closed = exc.rcvd.code if exc.rcvd is not None else None


def _replaced(cluster: RedisClusterServer, key: str, port: int) -> bool:
    """Another primary (a promoted replica) serves key's slot, no longer the one at `port`."""
    try:
        return cluster.primary_of(key) != port
    except (redis.RedisError, RedisClusterException):  # the cluster is between two views
        return False


def _room_on(cluster: RedisClusterServer, port: int) -> str:
    """A room whose keys live on the primary at `port`."""
    for i in range(1000):
        if cluster.primary_of(f"lr:{{r:room{i}}}:meta") == port:
            return f"room{i}"
    raise AssertionError("no room id hashes to that primary")


async def test_primary_killed_under_traffic(
    redis_cluster: RedisClusterServer, start_nodes, open_client
) -> None:
    victim = redis_cluster.primary_of("lr:{u:bob}:dm")  # the primary holding bob's DMs
    room = _room_on(redis_cluster, victim)  # and the room's history
    calm = _room_on(redis_cluster, next(p for p in redis_cluster.primaries() if p != victim))
    n0, n1 = start_nodes(redis_cluster.url, 2, "--redis-cluster")
    # the DM parties sit in a room of another shard: a room of the lost shard may be reset
    bob = await open_client(n0, "bob", room=calm)
    watches = [Watch(await open_client(node, f"v{i}", room=room)) for i, node in enumerate((n0, n1))]
    readers = [asyncio.create_task(w.run()) for w in watches]
    alice = await open_client(n1, "alice", room=calm)
    talker = await open_client(n0, "talker", room=room)

    acked: dict[int, str] = {}  # cid -> DM id, only for DMs the server acknowledged
    refused: list[int] = []
    received: set[str] = set()
    stop = asyncio.Event()

    async def send_dms() -> None:
        cid = 0
        while not stop.is_set():
            cid += 1
            await alice.send(t="dm", to="bob", text=f"dm{cid}", cid=cid)
            frame = await alice.recv_until(
                lambda f, cid=cid: (
                    (f["t"], f.get("cid"), f.get("ref")) in (("dm_ack", cid, None), ("error", None, cid))
                )
            )
            if frame["t"] == "dm_ack":
                acked[cid] = frame["id"]
            else:
                assert frame["code"] == 4501, frame
                refused.append(cid)
            await asyncio.sleep(0.02)

    async def read_bob() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await bob.recv(WAIT * 4)
                if frame["t"] == "dm":
                    received.add(frame["id"])

    async def talk() -> None:
        i = 0
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set():
                await talker.send(t="danmaku", text=f"d{i}")
                i += 1
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(c()) for c in (send_dms, read_bob, talk)]
    try:
        await apoll(lambda: len(acked) >= 10, what="DMs acknowledged before the kill")
        redis_cluster.kill(victim)
        # the replica takes over; both nodes find it without being told. Wait for that promotion
        # itself: right after the SIGKILL every node still reports the slots served (the death
        # is not detected yet), and a victim restarted then came back as the primary, empty
        await apoll(
            lambda: asyncio.to_thread(_replaced, redis_cluster, "lr:{u:bob}:dm", victim), what="failover"
        )
        await apoll(lambda: asyncio.to_thread(redis_cluster.healthy, False), what="failover")
        await n0.wait_ready()
        await n1.wait_ready()
        # the old primary comes back as a replica of the new one: DMs are acked again (WAIT 1)
        redis_cluster.restart(victim)
        await apoll(lambda: asyncio.to_thread(redis_cluster.healthy), what="the replica back in sync")
        after = len(acked)
        await apoll(lambda: len(acked) >= after + 10, what="DMs acknowledged after the failover")
        stop.set()
        await within(asyncio.gather(tasks[0], tasks[2]), WAIT)
        await apoll(lambda: set(acked.values()) <= received, what="every acknowledged DM at bob")
        assert n0.metric("liveroom_broker_disconnects_total") >= 1  # the node did lose the shard
    finally:
        stop.set()
        for task in (*tasks, *readers):
            task.cancel()
        await asyncio.gather(*tasks, *readers, return_exceptions=True)
    for watch in watches:  # a viewer either saw every event in order or was told (in-band)
        assert watch.closed in (None, 1012), watch.closed
    # traffic flows on the new topology: a fresh viewer on each node gets the other's danmaku
    fresh = [await open_client(node, f"f{i}", room=room) for i, node in enumerate((n0, n1))]
    await fresh[0].send(t="danmaku", text="after-0")
    await fresh[1].send(t="danmaku", text="after-1")
    for client in fresh:
        seen = await client.events(lambda e: e["t"] == "danmaku" and e["text"].startswith("after"), 2)
        assert sorted(e["text"] for e in seen) == ["after-0", "after-1"]


def _user_on(cluster: RedisClusterServer, port: int, prefix: str) -> str:
    """A uid whose keys live on the primary at `port`."""
    for i in range(1000):
        if cluster.primary_of(f"lr:{{u:{prefix}{i}}}:dm") == port:
            return f"{prefix}{i}"
    raise AssertionError("no uid hashes to that primary")


async def test_a_primary_failover_costs_only_its_shard(
    redis_cluster: RedisClusterServer, start_nodes, open_client
) -> None:
    """Per-shard isolation (#23): while one primary fails over, rooms and users of the other
    shards keep delivering with no reset and no 4501, and the nodes stay ready; the failed
    shard's room either continues or its viewers are told (an in-band snapshot)."""
    victim = redis_cluster.primaries()[0]
    healthy = next(p for p in redis_cluster.primaries() if p != victim)
    hit, calm = _room_on(redis_cluster, victim), _room_on(redis_cluster, healthy)
    sender, recipient = _user_on(redis_cluster, healthy, "s"), _user_on(redis_cluster, healthy, "r")
    n0, n1 = start_nodes(redis_cluster.url, 2, "--redis-cluster")
    calm_watch = [Watch(await open_client(node, f"cv{i}", room=calm)) for i, node in enumerate((n0, n1))]
    hit_watch = [Watch(await open_client(node, f"hv{i}", room=hit)) for i, node in enumerate((n0, n1))]
    readers = [asyncio.create_task(w.run()) for w in (*calm_watch, *hit_watch)]
    talkers = [await open_client(n0, "t0", room=calm), await open_client(n0, "t1", room=hit)]
    bob = await open_client(n1, recipient, room=calm)
    alice = await open_client(n0, sender, room=calm)
    answers: list[dict] = []
    received: set[str] = set()
    not_ready: list[str] = []
    stop = asyncio.Event()

    async def send_dms() -> None:
        cid = 0
        while not stop.is_set():
            cid += 1
            await alice.send(t="dm", to=recipient, text=f"dm{cid}", cid=cid)
            answers.append(
                await alice.recv_until(
                    lambda f, cid=cid: (
                        (f["t"], f.get("cid"), f.get("ref")) in (("dm_ack", cid, None), ("error", None, cid))
                    )
                )
            )
            await asyncio.sleep(0.02)

    async def read_bob() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await bob.recv(WAIT * 4)
                if frame["t"] == "dm":
                    received.add(frame["id"])

    async def talk() -> None:
        i = 0
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set():
                for talker in talkers:
                    await talker.send(t="danmaku", text=f"d{i}")
                i += 1
                await asyncio.sleep(0.02)

    async def readiness() -> None:
        while not stop.is_set():
            for node in (n0, n1):
                status = (await asyncio.to_thread(node.http, "/readyz"))[0]
                if status != 200:
                    not_ready.append(f"{node.node_id}: {status}")
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(c()) for c in (send_dms, read_bob, talk, readiness)]
    try:
        await apoll(lambda: len(answers) >= 10, what="DMs answered before the kill")
        redis_cluster.kill(victim)
        at_kill = [len(w.texts) for w in calm_watch]
        # both nodes notice the lost shard (its per-shard state in /metrics) ...
        victim_name = f"127.0.0.1:{victim}"
        for node in (n0, n1):
            await apoll(
                lambda node=node: asyncio.to_thread(
                    lambda: (
                        prom.sample(node.http("/metrics")[1], "liveroom_broker_shard_up", shard=victim_name)
                        in (0.0, None)
                    )
                ),
                what="the lost shard seen",
            )
        # ... and follow the failover alone
        await apoll(lambda: asyncio.to_thread(redis_cluster.healthy, False), what="failover")
        await apoll(
            lambda: asyncio.to_thread(
                lambda: all(
                    prom.total(node.http("/metrics")[1], "liveroom_broker_shard_up") == 3 for node in (n0, n1)
                )
            ),
            what="every shard served again",
        )
        after = len(answers)
        try:
            await apoll(lambda: len(answers) >= after + 10, what="DMs answered after the failover")
        except TimeoutError:
            raise AssertionError(f"DMs stuck after {answers[-3:]}") from None
        stop.set()
        await within(asyncio.gather(tasks[0], tasks[2], tasks[3]), WAIT)
        acked = {a["id"] for a in answers if a["t"] == "dm_ack"}
        await apoll(lambda: acked <= received, what="every acknowledged DM at the recipient")
    finally:
        stop.set()
        for task in (*tasks, *readers):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ended = await asyncio.gather(*readers, return_exceptions=True)
    gaps = [e for e in ended if isinstance(e, AssertionError)]
    assert not gaps, gaps  # no viewer saw a silent gap
    assert all(len(w.texts) > n for w, n in zip(calm_watch, at_kill, strict=True))
    assert not not_ready, not_ready  # most shards served throughout: ready
    refused = [a for a in answers if a["t"] == "error"]
    assert not refused, refused  # the DM parties' shard never failed: no 4501
    for watch in calm_watch:  # no reset, no gap: Watch asserts consecutive seqs
        assert watch.closed is None and watch.resets == 0, (watch.closed, watch.resets)
        assert watch.texts, "the healthy room delivered"
    for watch in hit_watch:  # the failed shard: every event in order, or told on its connection
        assert watch.closed in (None, 1012), watch.closed


async def test_a_hung_primary_holds_only_its_own_rooms(
    redis_cluster: RedisClusterServer, start_nodes, open_client
) -> None:
    """A primary that stops answering (SIGSTOP: no reset, the node's connection just hangs)
    must not hold the tick of the other shards' rooms (#23): their danmaku go on under the same
    Redis epoch while the stopped shard's pipeline is unanswered, i.e. before the node gives up
    on it (its 10 s command timeout, which counts a disconnect). Before, every tick after the
    hung one waited for that timeout, and then the whole session started over."""
    victim = redis_cluster.primaries()[0]
    healthy = next(p for p in redis_cluster.primaries() if p != victim)
    hit, calm = _room_on(redis_cluster, victim), _room_on(redis_cluster, healthy)
    (n0,) = start_nodes(redis_cluster.url, 1, "--redis-cluster")
    viewer = await open_client(n0, "cv", room=calm)
    epoch = viewer.snapshot["epoch"]
    calm_talker = await open_client(n0, "ct", room=calm)
    hit_talker = await open_client(n0, "ht", room=hit)
    seen: list[tuple[str, str]] = []  # (batch epoch, text) as the calm viewer got them

    async def want(text: str) -> None:
        while text not in [t for _, t in seen]:
            frame = await viewer.recv(WAIT)
            if frame["t"] == "batch":
                seen.extend((frame.get("epoch", epoch), e.get("text", "")) for e in frame["events"])

    proc = redis_cluster.procs[victim]
    proc.send_signal(signal.SIGSTOP)
    try:
        await hit_talker.send(t="danmaku", text="h1")  # a pipeline to the hung primary
        await calm_talker.send(t="danmaku", text="c1")
        await within(want("c1"), WAIT)
        await hit_talker.send(t="danmaku", text="h2")
        await calm_talker.send(t="danmaku", text="c2")
        await within(want("c2"), WAIT)
        metrics = (await asyncio.to_thread(n0.http, "/metrics"))[1]
        assert prom.total(metrics, "liveroom_broker_disconnects_total") == 0  # not waited out
    finally:
        proc.send_signal(signal.SIGCONT)
    assert {e for e, _ in seen} == {epoch}, seen  # the calm room never went local: no reset


async def test_the_promoted_replica_is_not_lost_again_while_its_connections_open(
    redis_cluster: RedisClusterServer,
) -> None:
    """The cause of a flaky 503 in the failover test above (#21): once the re-read slot map
    named the promoted replica, the node opened its connections to it; a command routed to it
    in between (a presence heartbeat, a tick) found no connection and lost that shard as well,
    so two of three shards counted lost and /readyz said 503 on a node serving two. Here a
    command goes to the failed shard on every turn of the node's event loop, through the
    failover until the new primary answers it: the node stays ready on every turn, and the
    failover costs one lost shard, not two."""
    victim = redis_cluster.primaries()[0]
    key = f"lr:{{r:{_room_on(redis_cluster, victim)}}}:meta"
    broker = RedisBroker(redis_cluster.url, "b0", cluster=True)
    await broker.start()
    ready: list[bool] = []
    try:
        assert broker.ready
        lost_before = broker_disconnects._value.get()
        redis_cluster.kill(victim)

        async def until_served() -> None:
            while True:
                (answer,) = await broker.pipelined([(key, ("EXISTS", key))])
                ready.append(broker.ready)
                if answer == 0:  # only a live primary answers: the promoted replica
                    return

        await within(until_served(), WAIT * 2)
        lost = broker_disconnects._value.get() - lost_before
    finally:
        await broker.close()
    assert len(ready) > 1  # the loop did run through the failover
    assert all(ready), f"not ready on {ready.count(False)} of {len(ready)} turns"
    assert lost == 1, lost


async def test_a_hung_primary_holds_only_its_own_rooms_heartbeats(
    redis_cluster: RedisClusterServer, start_nodes, open_client
) -> None:
    """The presence heartbeat is answered per shard (#23): while one primary is stopped
    (SIGSTOP), the other shards' rooms keep being re-reported (the node's presence deadline in
    the room moves on) before the node gives up on the stopped one (its 10 s command timeout,
    which counts a disconnect). Before, the heartbeat waited on every shard at once: a room of
    a healthy shard went unreported for 10 s (its presence expired after 1.5 s), and the
    timeout then lost every shard in that pipeline. When the node does give up, it loses the
    stopped shard only."""
    victim = redis_cluster.primaries()[0]
    healthy = next(p for p in redis_cluster.primaries() if p != victim)
    hit, calm = _room_on(redis_cluster, victim), _room_on(redis_cluster, healthy)
    (n0,) = start_nodes(redis_cluster.url, 1, "--redis-cluster")  # --presence-ttl 1.5: a beat per 0.5 s
    viewer = await open_client(n0, "cv", room=calm)
    epoch = viewer.snapshot["epoch"]
    await open_client(n0, "hv", room=hit)

    def deadline() -> float | None:  # the node's presence deadline in the calm room (Redis clock)
        with redis.Redis(port=healthy, socket_timeout=5) as client:
            return client.zscore(f"lr:{{r:{calm}}}:beat", n0.node_id)

    await apoll(lambda: asyncio.to_thread(deadline), what="the calm room reported")
    others = [p for p in redis_cluster.primaries() if p != victim]
    proc = redis_cluster.procs.pop(victim)
    proc.send_signal(signal.SIGSTOP)
    try:
        seen: set[float] = set()

        async def beats() -> bool:
            seen.add(await asyncio.to_thread(deadline))
            return len(seen) >= 4  # 3 renewals after the stop: one is surely after the hit room's

        await apoll(beats, what="the calm room re-reported while the other shard hangs")
        assert n0.metric("liveroom_broker_disconnects_total") == 0  # not after the timeout
        # the node gives up on the stopped primary: that shard only
        await apoll(
            lambda: asyncio.to_thread(n0.metric, "liveroom_broker_disconnects_total"), what="the shard lost"
        )
        metrics = (await asyncio.to_thread(n0.http, "/metrics"))[1]
        for port in others:  # the shards that never stopped answering
            assert prom.sample(metrics, "liveroom_broker_shard_up", shard=f"127.0.0.1:{port}") == 1
    finally:
        proc.kill()
        proc.wait()
    talker = await open_client(n0, "ct", room=calm)
    await talker.send(t="danmaku", text="after")
    frame = await viewer.recv_until(
        lambda f: f["t"] == "batch" and any(e.get("text") == "after" for e in f["events"])
    )
    assert frame.get("epoch", epoch) == epoch  # the calm room never went local: no reset


async def test_a_room_closed_while_its_shard_hangs_keeps_its_events(
    redis_cluster: RedisClusterServer, start_nodes, open_client
) -> None:
    """A node whose room empties while the room's ticks wait on a hung primary (one in flight,
    one held back behind it) keeps them and sends them once the shard serves again (its
    replica took over): a viewer on another node gets them late, in order, with no gap. Before,
    the held tick went with the room and the failed one was numbered for nobody: never
    delivered, and nothing told the viewer (#23)."""
    victim = redis_cluster.primaries()[0]
    hit = _room_on(redis_cluster, victim)
    n0, n1 = start_nodes(redis_cluster.url, 2, "--redis-cluster")
    watch = Watch(await open_client(n1, "v", room=hit))
    reader = asyncio.create_task(watch.run())
    talker = await open_client(n0, "t", room=hit)
    await talker.send(t="danmaku", text="before")
    await apoll(lambda: "before" in watch.texts, what="the room delivering")
    proc = redis_cluster.procs.pop(victim)
    proc.send_signal(signal.SIGSTOP)
    try:
        ticks = await asyncio.to_thread(n0.metric, "liveroom_broker_tick_pipelines_total")
        await talker.send(t="danmaku", text="h1")
        await apoll(  # h1's tick is sent (to the stopped primary: unanswered)
            lambda: asyncio.to_thread(lambda: n0.metric("liveroom_broker_tick_pipelines_total") > ticks),
            what="h1's tick sent",
        )
        await talker.send(t="danmaku", text="h2")  # held back behind it
        await talker.close()  # n0's last viewer of the room: the room closes there
        await apoll(
            lambda: asyncio.to_thread(lambda: n0.metric("liveroom_rooms") == 0), what="the room closed on n0"
        )
        await apoll(lambda: asyncio.to_thread(redis_cluster.healthy, False), what="failover")
    finally:
        proc.kill()
        proc.wait()
    try:
        await apoll(lambda: "h2" in watch.texts or watch.closed is not None, what="the kept danmaku")
    finally:
        reader.cancel()
        ended = await asyncio.gather(reader, return_exceptions=True)
    assert not [e for e in ended if isinstance(e, AssertionError)], ended  # no silent gap
    assert watch.closed is None, watch.closed  # nothing reset: the room's stream went on
    assert watch.texts == ["before", "h1", "h2"], watch.texts


def _replica_of(port: int) -> int:
    """The port of the replica of the primary at `port`."""
    with redis.Redis(port=port, decode_responses=True) as c:
        me = c.execute_command("CLUSTER", "MYID")
        return next(
            int(line.split()[1].split(":")[1].split("@")[0])
            for line in c.execute_command("CLUSTER", "NODES").splitlines()
            if "slave" in line and me in line
        )


async def _acked_dm(alice: WsClient, to: str, text: str) -> dict:
    """Send until acked (the same cid): a 4501 meanwhile is the truth while a shard fails over."""
    while True:
        await alice.send(t="dm", to=to, text=text, cid=text)
        answer = await alice.recv_until(lambda f: text in (f.get("cid"), f.get("ref")))
        if answer["t"] == "dm_ack":
            return answer
        assert answer["code"] == 4501, answer
        await asyncio.sleep(0.2)


async def test_a_planned_failover_is_followed_with_no_dm_or_danmaku_missed(
    redis_cluster: RedisClusterServer, start_nodes, open_client
) -> None:
    """A replica takes over with CLUSTER FAILOVER (planned maintenance): the old primary lives
    on as a replica, so the node's connections to it stay open. The node must move to the new
    primary by itself (Redis unsubscribes the moved slots' channels): a DM acked after the
    failover reaches its recipient live, and the shard's room delivers danmaku again."""
    victim = redis_cluster.primaries()[0]
    calm = _room_on(redis_cluster, next(p for p in redis_cluster.primaries() if p != victim))
    room, user = _room_on(redis_cluster, victim), _user_on(redis_cluster, victim, "r")
    (node,) = start_nodes(redis_cluster.url, 1, "--redis-cluster")
    bob = await open_client(node, user, room=calm)  # a room on another shard: never reset here
    alice = await open_client(node, "alice", room=calm)
    await open_client(node, "watcher", room=room)  # the node follows the shard's room throughout
    with redis.Redis(port=_replica_of(victim)) as c:
        c.execute_command("CLUSTER", "FAILOVER")
    await apoll(lambda: asyncio.to_thread(lambda: _replaced(redis_cluster, f"lr:{{r:{room}}}:meta", victim)))
    answer = await _acked_dm(alice, user, "after the failover")
    got = await bob.recv_until(lambda f: f["t"] == "dm" and f["text"] == "after the failover")
    assert got["id"] == answer["id"]
    viewer = await open_client(node, "viewer", room=room)  # reset or not: joined now
    talker = await open_client(node, "talker", room=room)
    await talker.send(t="danmaku", text="after the failover")
    await viewer.events(lambda e: e.get("text") == "after the failover", 1)


async def test_a_connection_opened_while_its_users_shard_is_down_gets_the_backlog(
    redis_cluster: RedisClusterServer, start_nodes, open_client
) -> None:
    """A user's second connection on a node joins while the user's shard has no primary (killed,
    its replica held stopped so it cannot take over yet): once the replica serves, that
    connection gets the DMs acked before, then the live ones. (It got only the live ones: its
    DM cursor was opened empty, and the next live DM moved it past the backlog for good.)"""
    victim = redis_cluster.primaries()[0]
    calm = _room_on(redis_cluster, next(p for p in redis_cluster.primaries() if p != victim))
    user = _user_on(redis_cluster, victim, "b")
    (node,) = start_nodes(redis_cluster.url, 1, "--redis-cluster")
    await open_client(node, user, room=calm)  # the user is followed on the node
    alice = await open_client(node, "alice", room=calm)
    acks = [await _acked_dm(alice, user, f"m{i}") for i in range(3)]  # on the replica too (WAIT 1)
    replica = redis_cluster.procs[_replica_of(victim)]
    replica.send_signal(signal.SIGSTOP)  # no takeover until we say
    try:
        redis_cluster.kill(victim)
        await apoll(lambda: asyncio.to_thread(lambda: node.metric("liveroom_broker_shard_up") < 3))
        fresh = await open_client(node, user, room=calm)  # the shard is down: its backlog is owed
    finally:
        replica.send_signal(signal.SIGCONT)
    got = [await fresh.recv_until(lambda f: f["t"] == "dm", WAIT * 6) for _ in range(3)]
    assert [d["id"] for d in got] == [a["id"] for a in acks]
    redis_cluster.restart(victim)  # back as the new primary's replica: its DMs are stored again
    await _acked_dm(alice, user, "live")
    assert (await fresh.recv_until(lambda f: f["t"] == "dm"))["text"] == "live"


async def test_a_primary_whose_cluster_is_not_ok_is_not_serving_yet(tmp_path) -> None:
    """Right after every node of a cluster restarts, a primary answers CLUSTERDOWN until the
    cluster has formed: the broker must not count it as serving yet (it did, then lost it at the
    first CLUSTERDOWN and reset every room a second time). A lone cluster node owning no slot
    says `cluster_state:fail`; once it owns every slot it says ok, and only then does it pass."""
    from redis.asyncio import Redis

    from server.broker.shards import _cluster_ok

    node = RedisClusterServer(tmp_path, masters=1, replicas=0)
    port = node.ports[0]
    node._spawn(port)
    client = Redis(port=port)
    try:
        await apoll(lambda: node._ping(port), what="the lone cluster node to answer")
        with pytest.raises(ConnectionError, match="cluster_state fail"):
            await _cluster_ok("lone", client)
        await client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)

        async def ok() -> bool:
            try:
                await _cluster_ok("lone", client)
            except ConnectionError:
                return False
            return True

        await apoll(ok, what="cluster_state ok once every slot is owned")
    finally:
        await client.aclose()
        node.stop()


async def _full_pool_reads(cluster: RedisClusterServer) -> tuple[list[object], bool, bool]:
    """Twenty history reads at once through a cluster client allowed one connection per node,
    on a room with one event: (their answers, a shard lost?, the node ready after?)."""
    cluster.flush()
    broker = RedisBroker(cluster.url, "pool", cluster=True)
    await broker.start()
    try:
        assert broker.ready
        got: list[tuple[str, object]] = []  # (epoch, event)
        await broker.subscribe("r0", lambda _r, epoch, _f, events: got.extend((epoch, e) for e in events))
        await broker.publish(
            Publish(
                "r0", [{"t": "danmaku", "uid": "u", "name": "u", "ts": now_ms(), "text": "hi"}], 0, None, 1
            )
        )
        await apoll(lambda: got, what="the event published")
        for node in broker._redis.nodes_manager.nodes_cache.values():
            node.max_connections = 1
        lost_before = broker_disconnects._value.get()
        answers = await asyncio.gather(
            *(broker.stream.history_since("r0", got[0][0], 0) for _ in range(20)), return_exceptions=True
        )
        return answers, broker_disconnects._value.get() != lost_before or bool(broker._down), broker.ready
    finally:
        await broker.close()


async def test_a_full_client_pool_is_waited_for(
    shared_cluster: RedisClusterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume storm (a node killed, 1,667 viewers rejoining with `resume`) reads history
    through redis-py's cluster client, which refuses a command past its per-node connection
    limit (MaxConnectionsError) at once. The client waits for a free connection instead: every
    read is served (without the wait, most of these viewers got `recovered: false`)."""
    monkeypatch.setattr(redis_sturdy, "POOL_WAIT_S", 60.0)  # the bound is not under test: a loaded CI
    answers, lost, ready = await _full_pool_reads(shared_cluster)
    # each read served from seq 1 (a presence event may follow the danmaku)
    firsts = [a[0].get("text") if isinstance(a, list) and a else a for a in answers]
    assert firsts == ["hi"] * len(answers), firsts
    assert not lost and ready


async def test_a_full_client_pool_is_not_a_lost_shard(
    shared_cluster: RedisClusterServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool still full past the wait refuses the command. That is this node being busy, not
    the shard being gone: taken for a lost shard it numbered the shard's rooms alone, reset them
    and sent more rejoins into the same pool (an in-band soak lost a shard 89 times in a
    minute). Here nothing waits: some reads are refused, no shard is lost, the node stays ready."""
    monkeypatch.setattr(redis_sturdy, "POOL_WAIT_S", 0.0)
    monkeypatch.setattr(redis_broker, "_POOL_FULL", Throttle())  # its own log budget
    answers, lost, ready = await _full_pool_reads(shared_cluster)
    assert None in answers  # refused: the viewer is told `recovered: false`
    assert all(a is None or isinstance(a, list) for a in answers), answers  # never an exception
    assert "redis client pool full" in caplog.text
    assert not lost and ready
