"""A DM's answer is the truth, on a real Redis that must WAIT for a replica it does not have:
4501 means nothing was stored (and nothing reaches the recipient), a retry with the same `cid`
stores once, and the replica check makes the shortage visible (metric, WARNING line)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import prom
from tests.ports import free_port
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import (
    NodeProc,
    RedisClusterServer,
    RedisServer,
    apoll,
    poll,
    requires_redis,
)

pytestmark = requires_redis


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator:
    """start_replica(primary): a redis-server replicating it, stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def _start(primary: RedisServer) -> None:
        port = free_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(primary.port)]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with primary.client() as client:
            poll(
                lambda: client.info("replication").get("slave0", {}).get("state") == "online",
                what="the replica to finish its first sync",
            )

    yield _start
    for proc in procs:
        proc.kill()
        proc.wait()


def _replicas(node: NodeProc) -> float | None:
    return prom.sample(node.http("/metrics")[1], "liveroom_broker_shard_replicas", shard="main")


async def test_refused_dm_is_not_stored_and_its_retry_stores_once(
    redis_server: RedisServer, start_nodes, open_client, start_replica
) -> None:
    (node,) = start_nodes(
        redis_server.url, 1, "--redis-wait-replicas", "1", "--redis-replica-check", "0.2",
        "--redis-wait-timeout", "60000",  # the retry's WAIT: replicated however slow the machine
    )  # fmt: skip
    await apoll(lambda: asyncio.to_thread(lambda: _replicas(node) == 0), what="the replica check")
    carol = await open_client(node, "carol")
    alice = await open_client(node, "alice")
    await alice.send(t="dm", to="carol", text="first", cid="c1")
    refused = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
    assert refused["t"] == "error" and refused["code"] == 4501 and refused["ref"] == "c1", refused
    assert refused["retry_after"] > 0 and "not stored" in refused["msg"], refused
    with redis_server.client() as r:
        assert r.xlen("lr:{u:carol}:dm") == 0  # 4501: nothing stored, so nothing can be delivered
    refusals = prom.sample(
        node.http("/metrics")[1], "liveroom_broker_dm_refused_total", shard="main", reason="no_replica"
    )
    assert refusals == 1

    start_replica(redis_server)  # the operator's fix: a replica is back
    await apoll(lambda: asyncio.to_thread(lambda: _replicas(node) == 1), what="the replica seen")
    await alice.send(t="dm", to="carol", text="first", cid="c1")  # the retry PROTOCOL.md asks for
    ack = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
    assert ack["t"] == "dm_ack" and ack["cid"] == "c1" and "replicated" not in ack, ack
    await alice.send(t="dm", to="carol", text="first", cid="c1")  # once more: the same ack
    again = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
    assert again == ack
    got = await carol.recv_until(lambda f: f["t"] == "dm")
    assert got["text"] == "first" and got["id"] == ack["id"]
    with redis_server.client() as r:
        assert r.xlen("lr:{u:carol}:dm") == 1  # stored once


async def test_degraded_mode_acks_on_the_primary_and_says_so(
    redis_server: RedisServer, start_nodes, open_client
) -> None:
    (node,) = start_nodes(
        redis_server.url,
        1,
        "--redis-wait-replicas",
        "1",
        "--redis-wait-degrade",
        "--redis-replica-check",
        "0.2",
    )
    alice = await open_client(node, "alice")
    # before and after the check sees no replica: stored, acked with replicated=false, never 4501
    for i in range(2):
        if i:
            await apoll(lambda: asyncio.to_thread(lambda: _replicas(node) == 0), what="the replica check")
        await alice.send(t="dm", to="carol", text=f"dm{i}", cid=f"d{i}")
        ack = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
        assert ack["t"] == "dm_ack" and ack["replicated"] is False, ack
        await alice.send(t="dm", to="carol", text=f"dm{i}", cid=f"d{i}")
        assert await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack")) == ack
    with redis_server.client() as r:
        assert r.xlen("lr:{u:carol}:dm") == 2  # each stored once


async def test_a_dm_waiting_for_its_replica_does_not_hold_up_the_senders_frames(
    redis_server: RedisServer, start_nodes, open_client
) -> None:
    # no replica and no check yet (an hour away): the DM's WAIT runs out its 500 ms in Redis
    (node,) = start_nodes(redis_server.url, 1, "--redis-wait-replicas", "1", "--redis-replica-check", "3600")
    alice = await open_client(node, "alice")
    await alice.send(t="dm", to="carol", text="slow", cid="s1")
    await alice.send(t="ping", ts=7)
    first = await alice.recv_until(lambda f: f["t"] in ("pong", "dm_ack", "error"))
    assert first["t"] == "pong" and first["ts"] == 7, first  # answered while the DM waits
    ack = await alice.recv_until(lambda f: f["t"] in ("dm_ack", "error"))
    assert ack["t"] == "dm_ack" and ack["cid"] == "s1" and ack["replicated"] is False, ack


async def test_a_cluster_that_cannot_be_reached_costs_4501_never_a_traceback(
    redis_cluster: RedisClusterServer, open_client, tmp_path: Path
) -> None:
    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        node = NodeProc(redis_cluster.url, "n0", "--redis-cluster", log=log)
    try:
        alice = await open_client(node, "alice")
        await alice.send(t="dm", to="carol", text="before", cid="b")
        assert (await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack")))["t"] == "dm_ack"
        redis_cluster.stop()  # every primary and replica: "Redis Cluster cannot be connected"
        await node.wait_ready(False)
        for i in range(5):
            await alice.send(t="dm", to="carol", text=f"down{i}", cid=f"x{i}")
            err = await alice.recv_until(lambda f: f["t"] in ("error", "dm_ack"))
            assert err["t"] == "error" and err["code"] == 4501 and err["ref"] == f"x{i}", err
            assert err["retry_after"] > 0
        await alice.send(t="danmaku", text="still local")
        await alice.events(lambda e: e.get("text") == "still local", 1)
    finally:
        node.stop()
    text = log_path.read_text()
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
