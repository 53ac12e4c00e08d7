"""A real 3+3 Redis Cluster losing a primary under traffic: a replica takes over, the nodes
follow the new topology by themselves, no acknowledged DM is lost, and no viewer sees a
silent gap (its events stay consecutive, or it is told to rejoin with close code 1012)."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.exceptions import ConnectionClosed

from tests.conftest import WsClient
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import WAIT, RedisClusterServer, apoll, requires_redis

pytestmark = requires_redis


class Watch:
    """A viewer's events after its snapshot; fails on a gap, stops at a 1012 close."""

    def __init__(self, client: WsClient) -> None:
        assert client.snapshot is not None
        self.client = client
        self.seq = client.snapshot["seq"]
        self.texts: list[str] = []
        self.closed: int | None = None

    async def run(self) -> None:
        try:
            while True:
                frame = await self.client.recv(WAIT * 4)
                if frame["t"] != "batch":
                    continue
                for event in frame["events"]:
                    assert event["seq"] == self.seq + 1, f"silent gap: {self.seq} then {event['seq']}"
                    self.seq = event["seq"]
                    if event["t"] == "danmaku":
                        self.texts.append(event["text"])
        except ConnectionClosed as exc:
            self.closed = exc.rcvd.code if exc.rcvd is not None else None


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
        # the replica takes over; both nodes find it without being told
        await apoll(lambda: asyncio.to_thread(redis_cluster.healthy, False), what="failover")
        await n0.wait_ready()
        await n1.wait_ready()
        # the old primary comes back as a replica of the new one: DMs are acked again (WAIT 1)
        redis_cluster.restart(victim)
        await apoll(lambda: asyncio.to_thread(redis_cluster.healthy), what="the replica back in sync")
        after = len(acked)
        await apoll(lambda: len(acked) >= after + 10, what="DMs acknowledged after the failover")
        stop.set()
        await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), WAIT)
        await apoll(lambda: set(acked.values()) <= received, what="every acknowledged DM at bob")
        assert n0.metric("liveroom_broker_disconnects_total") >= 1  # the node did lose the shard
    finally:
        stop.set()
        for task in (*tasks, *readers):
            task.cancel()
        await asyncio.gather(*tasks, *readers, return_exceptions=True)
    for watch in watches:  # a viewer either saw every event in order or was told to rejoin
        assert watch.closed in (None, 1012), watch.closed
    # traffic flows on the new topology: a fresh viewer on each node gets the other's danmaku
    fresh = [await open_client(node, f"f{i}", room=room) for i, node in enumerate((n0, n1))]
    await fresh[0].send(t="danmaku", text="after-0")
    await fresh[1].send(t="danmaku", text="after-1")
    for client in fresh:
        seen = await client.events(lambda e: e["t"] == "danmaku" and e["text"].startswith("after"), 2)
        assert sorted(e["text"] for e in seen) == ["after-0", "after-1"]
