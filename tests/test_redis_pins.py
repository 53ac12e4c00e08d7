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

from server.deadline import within
from server.wire import protocol
from tests.conftest import WsClient, token
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import RedisServer, RedisTarget, requires_redis

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

        await host.send(t="product", id="tee", price=99)  # every view edits the pinned card
        await first.events(lambda e: e["t"] == "product" and e["price"] == 99, 1)
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
        line = await within(asyncio.to_thread(bot.stdout.readline), 60)
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


async def _staff(node: Any, user: str, role: str, name: str) -> WsClient:
    url = f"{node.ws_url}?token={token('r1', user, role, name=name)}"  # type: ignore[arg-type]
    client = WsClient(await connect(url))
    client.snapshot = await client.recv()
    assert client.snapshot["t"] == "snapshot", client.snapshot
    return client


async def test_host_tools_are_kept_in_redis(redis_any: RedisTarget, start_nodes) -> None:
    """The board (questions, askers' names, replies), pins and product edits live in Redis: a
    host that reconnects to a node that opens the room only then gets them all, and so does a
    moderator joining late; the staff's list keeps the last QA_SIZE questions and replies."""
    a, b, c = start_nodes(redis_any, 3)
    host = await _staff(a, "hana", "host", "Hana")
    bot = await _staff(a, "bot", "assistant", "Shop assistant")
    vic = await _staff(b, "vic", "viewer", "Vic Li")  # asks on another node than the assistant's
    opened = [host, bot, vic]
    try:
        await vic.send(t="danmaku", text="T恤多少钱")
        await vic.send(t="danmaku", text="发什么快递")
        s1, s2 = (e["seq"] for e in await bot.events(lambda e: e["t"] == "danmaku", 2))
        await bot.send(t="question", key="price:tee", label="price of the tee", seqs=[s1], askers=["vic"])
        await bot.send(t="question", key="faq:courier", label="which courier", seqs=[s2], askers=["vic"])
        await bot.send(t="reply", text="@Vic Li: ¥129", seqs=[s1], askers=["vic"])
        await host.send(t="pin", product={"id": "tee", "name": "Tee", "price": 129, "stock": 40})
        seen = await host.events(lambda e: e["t"] in ("question", "reply", "pin"), 4)
        await host.send(t="product", id="tee", price=99)
        await host.send(t="product", id="tee", stock=5)
        await host.send(t="product", id="tee", price=89)  # replaces the first price edit only
        seen += await host.events(lambda e: e["t"] == "product", 3)
        assert seen[0]["names"] == ["Vic Li"]  # the asker's display name, from node b's danmaku
        await host.close()

        again = await _staff(c, "hana", "host", "Hana")  # node c opens the room now: from Redis
        late = await _staff(c, "mo", "moderator", "Mo")
        opened += [again, late]
        for snap in (again.snapshot, late.snapshot):
            board = snap["qa"]
            assert [(e["t"], e["seq"]) for e in board] == [
                (e["t"], e["seq"]) for e in seen if e["t"] != "pin"
            ][:3]
            assert board[0]["names"] == ["Vic Li"] and board[2]["text"] == "@Vic Li: ¥129"
            assert board[2]["from"] == "assistant" and board[2]["seqs"] == [s1]
            assert [(p["id"], p["price"], p["stock"]) for p in snap["products"]] == [("tee", 89, 5)]
            (pin,) = snap["pins"]
            assert pin["product"] == {"id": "tee", "name": "Tee", "price": 89, "stock": 5}
        viewer = await _staff(c, "vera", "viewer", "Vera")
        opened.append(viewer)
        assert "qa" not in viewer.snapshot and viewer.snapshot["pins"][0]["product"]["price"] == 89

        # the list is capped: the newest QA_SIZE questions and replies are kept
        extra = protocol.QA_SIZE + 5
        for i in range(extra):
            await bot.send(t="question", key=f"k{i}", label=f"q{i}", seqs=[s2], askers=["vic"])
        await late.events(lambda e: e["t"] == "question", extra)
        newest = await _staff(b, "hana", "host", "Hana")
        opened.append(newest)
        labels = [e["label"] for e in newest.snapshot["qa"]]
        assert labels == [f"q{i}" for i in range(5, extra)]
    finally:
        for client in opened:
            await client.close()
