"""Pins and answers across nodes sharing a real Redis: pins are sticky per pin id, so a node
that opens the room later shows them in its snapshots, and an unpin removes them there too;
the assistant on one node answers a viewer on another."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
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


async def test_assistant_on_one_node_answers_a_viewer_on_another(
    redis_server: RedisServer, start_nodes
) -> None:
    a, b = start_nodes(redis_server.url, 2)
    catalogue = Path(__file__).resolve().parent.parent / "client_demo" / "catalogue.yaml"
    bot = subprocess.Popen(
        [
            *(sys.executable, "-m", "server", "assistant", "--room", "r1"),
            *("--catalogue", str(catalogue), "--server", a.ws_url.removesuffix("/ws")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert bot.stdout is not None
    viewer = None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(bot.stdout.readline), 60)
        assert "answering" in line, line
        viewer = await _join(b, "vic")
        await viewer.send(t="danmaku", text="牛仔裤多少钱")
        (asked,) = await viewer.events(lambda e: e["t"] == "danmaku", 1)
        (reply,) = await viewer.events(lambda e: e["t"] == "reply", 1)
        assert reply["seqs"] == [asked["seq"]] and "¥199" in reply["text"] and reply["from"] == "assistant"
    finally:
        if viewer is not None:
            await viewer.close()
        bot.terminate()
        await asyncio.to_thread(bot.wait, 10)
