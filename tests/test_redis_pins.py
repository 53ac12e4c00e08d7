"""Pins across nodes sharing a real Redis: sticky per pin id, so a node that opens the room
later shows them in its snapshots, and an unpin removes them there too."""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import connect

from tests.conftest import WsClient, token
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, requires_redis

pytestmark = requires_redis


async def _join(node: Any, user: str, role: str = "viewer") -> WsClient:
    client = WsClient(await connect(f"{node.ws_url}?token={token('r1', user, role)}"))  # type: ignore[arg-type]
    client.snapshot = await client.recv()
    assert client.snapshot["t"] == "snapshot", client.snapshot
    return client


async def test_pins_reach_nodes_that_open_the_room_later(redis_server: RedisServer, start_nodes) -> None:
    a, b, c = start_nodes(redis_server.url, 3)
    host = await _join(a, "hana", "host")
    opened = [host]
    try:
        await host.send(t="pin", product={"id": "tee", "name": "Tee", "price": 129}, cid=1)
        await host.send(t="pin", text="今晚8点抽奖", cid=2)
        pins = await host.events(lambda e: e["t"] == "pin", 2)
        first = await _join(b, "bea")  # node b opens the room now: state comes from Redis
        opened.append(first)
        assert [p["id"] for p in first.snapshot["pins"]] == [p["id"] for p in pins]
        assert first.snapshot["pins"][0]["product"]["price"] == 129

        await host.send(t="product", id="tee", price=99)  # re-pins the edited card
        await first.events(lambda e: e["t"] == "pin" and e["product"]["price"] == 99, 1)
        await host.send(t="unpin", id=pins[1]["id"])
        await first.events(lambda e: e["t"] == "unpin", 1)
        late = await _join(c, "cy")  # node c opens the room after the edit and the unpin
        opened.append(late)
        assert [(p["id"], p["product"]["price"]) for p in late.snapshot["pins"]] == [("product:tee", 99)]
    finally:
        for client in opened:
            await client.close()
