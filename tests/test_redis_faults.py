"""DM backlog on every connection and idempotent sends across node processes sharing a real Redis."""

from __future__ import annotations

from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, requires_redis

pytestmark = requires_redis


async def test_second_connection_on_same_node_gets_the_backlog(
    redis_server: RedisServer, start_nodes, open_client
):
    n0, n1 = start_nodes(redis_server.url, 2)
    await open_client(n0, "bob", room="ra")  # the dead connection: never reads
    alice = await open_client(n1, "alice")
    acks = []
    for i in range(3):
        await alice.send(t="dm", to="bob", text=f"m{i}")
        acks.append(await alice.recv_until(lambda f: f["t"] == "dm_ack"))
    fresh = await open_client(n0, "bob", room="rb")  # same node as the dead one
    got = [await fresh.recv_until(lambda f: f["t"] == "dm") for _ in range(3)]
    assert [d["id"] for d in got] == [a["id"] for a in acks]
    await alice.send(t="dm", to="bob", text="live")
    assert (await fresh.recv_until(lambda f: f["t"] == "dm"))["text"] == "live"


async def test_dm_retry_on_another_node_returns_the_original_ack(
    redis_server: RedisServer, start_nodes, open_client
):
    n0, n1 = start_nodes(redis_server.url, 2)
    bob = await open_client(n1, "bob")
    alice = await open_client(n0, "alice")
    await alice.send(t="dm", to="bob", text="once", cid="c-1")
    ack = await alice.recv_until(lambda f: f["t"] == "dm_ack")
    n0.stop()  # SIGTERM: the sender's connection is reset (1012)
    again = await open_client(n1, "alice")
    await again.send(t="dm", to="bob", text="once", cid="c-1")
    assert await again.recv_until(lambda f: f["t"] == "dm_ack") == ack
    await again.send(t="dm", to="bob", text="after", cid="c-2")
    await again.recv_until(lambda f: f["t"] == "dm_ack")
    texts = [(await bob.recv_until(lambda f: f["t"] == "dm"))["text"] for _ in range(2)]
    assert texts == ["once", "after"]
    assert redis_server.client().xlen("lr:{u:bob}:dm") == 2
