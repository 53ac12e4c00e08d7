"""Media failover: three node processes on a real redis-server, the origin is SIGKILLed.

The Python host (`client_demo.host`, its own process, given two nodes) publishes on node A;
an aiortc viewer connected to node B watches through B's relay. A is SIGKILLed: its media
claim is not renewed, B notices within the claim TTL and drops A's `live` state, the host
reconnects to node C and publishes there, B pulls from C, and the viewer, answering the
server's offers as always, decodes video again without reconnecting. Every wait is on an
event or a decoded frame.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect

from server.deadline import within
from tests.conftest import token
from tests.redis_fixtures import *  # noqa: F403 - the fixtures
from tests.redis_fixtures import (
    NodeProc,
    RedisServer,
    apoll,
    failover_host,
    media_failover_nodes,
    requires_redis,
)
from tests.test_media_signaling import TIMEOUT, Conn, decoded, is_live, loopback  # noqa: F401

pytestmark = requires_redis
CLAIM_TTL = "1.5"


@pytest.fixture
def three_nodes(redis_server: RedisServer) -> Iterator[dict[str, NodeProc]]:
    with media_failover_nodes(redis_server.url, CLAIM_TTL) as nodes:
        yield nodes


@pytest.fixture
def host_process(three_nodes: dict[str, NodeProc]) -> Iterator[subprocess.Popen[str]]:
    with failover_host([three_nodes[n].ws_url for n in ("a", "c")], "r1", 160, 120) as proc:
        yield proc


@pytest.fixture
async def viewer(three_nodes: dict[str, NodeProc]) -> AsyncIterator[Conn]:
    ws = await connect(f"{three_nodes['b'].ws_url}?token={token('r1', 'vic', 'viewer')}")
    snapshot = msgpack.unpackb(await within(ws.recv(), TIMEOUT))
    conn = Conn(ws, snapshot)
    try:
        yield conn
    finally:
        await conn.close()


async def answer_offers(conn: Conn) -> None:
    """What a client does all along: answer every offer the server makes (renegotiation)."""
    while True:
        try:
            await conn.accept_offer()
        except TimeoutError:
            continue


async def test_origin_sigkill_video_comes_back_through_the_edge(
    three_nodes: dict[str, NodeProc], host_process: Any, viewer: Conn
) -> None:
    if not viewer.snapshot["live"]:
        await viewer.event(is_live("hana", True))
    await viewer.send(t="subscribe")
    answering = asyncio.get_running_loop().create_task(answer_offers(viewer))
    try:
        await apoll(lambda: viewer.of_kind("video"), timeout=TIMEOUT, what="a video track")
        first = viewer.of_kind("video")[0]
        await decoded(first)
        live = [e for e in viewer.events if e["t"] == "live"] or [viewer.snapshot]
        assert live[-1].get("node", viewer.snapshot.get("media_node")) == "a"

        three_nodes["a"].kill()  # SIGKILL: no goodbye, no released claim

        await viewer.event(lambda e: e["t"] == "live" and not e["on"] and e["node"] == "a")
        back = await viewer.event(lambda e: e["t"] == "live" and e["on"] and e["node"] == "c")
        assert back["uid"] == "hana"
        await apoll(lambda: len(viewer.of_kind("video")) >= 2, timeout=TIMEOUT, what="a new video track")
        frame = await decoded(viewer.of_kind("video")[-1])
        assert (frame.width, frame.height) == (160, 120)
        assert (
            three_nodes["b"].metric("liveroom_media_failovers_total")
            + three_nodes["c"].metric("liveroom_media_failovers_total")
            >= 1
        )  # a surviving node announced the dead origin's publishers gone
    finally:
        answering.cancel()
