"""Admin API (docs/API.md): authorisation, room list, system messages, closing, sanctions, health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from server.app import App
from server.config import Config
from tests.conftest import TIMEOUT, WsClient, token

ADMIN = "admin-token-for-tests"


@pytest.fixture
def config(config: Config) -> Config:
    config.admin_token = ADMIN
    return config


async def _call(
    app: App, method: str, path: str, bearer: str | None = ADMIN, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://127.0.0.1:{app.http_port}{path}", headers=headers, json=body
        ) as response,
    ):
        data = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, data


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/admin/rooms"),
        ("GET", "/api/admin/health"),
        ("POST", "/api/admin/rooms/r1/close"),
        ("POST", "/api/admin/rooms/r1/system"),
        ("POST", "/api/admin/users/bob/sanction"),
    ],
)
async def test_authorisation(app: App, method: str, path: str) -> None:
    assert (await _call(app, method, path, bearer=None))[0] == 401
    assert (await _call(app, method, path, bearer="junk"))[0] == 401
    assert (await _call(app, method, path, bearer=token("r1", "v", "viewer")))[0] == 403
    assert (await _call(app, method, path, bearer=token("r1", "h", "host")))[0] == 403


async def test_admin_off_without_token(config: Config) -> None:
    config.admin_token = ""
    app = App(config)
    await app.start()
    try:
        assert (await _call(app, "GET", "/api/admin/health", bearer=""))[0] == 401
        assert (await _call(app, "GET", "/api/admin/health", bearer="x"))[0] == 401
    finally:
        await app.stop()


async def test_rooms_health_and_system_message(app: App, join: Callable[..., Awaitable[WsClient]]) -> None:
    alice = await join("alice")
    await join("bob")
    await join("carol", room="r2")
    status, listing = await _call(app, "GET", "/api/admin/rooms")
    assert status == 200 and listing["node"] == "test-node"
    assert {r["room"]: r["local"] for r in listing["rooms"]} == {"r1": 2, "r2": 1}
    status, health = await _call(app, "GET", "/api/admin/health")
    assert status == 200 and health["ready"] and health["connections"] == 3
    assert (await _call(app, "POST", "/api/admin/rooms/r1/system", body={"text": ""}))[0] == 400
    status, _ = await _call(app, "POST", "/api/admin/rooms/r1/system", body={"text": "maintenance at 3"})
    assert status == 200
    [event] = await alice.events(lambda e: e["t"] == "system", 1)
    assert event["text"] == "maintenance at 3" and event["uid"] == "sys" and event["seq"] > 0


async def test_close_room(app: App, join: Callable[..., Awaitable[WsClient]]) -> None:
    alice = await join("alice")
    status, body = await _call(app, "POST", "/api/admin/rooms/r1/close")
    assert status == 200 and body["closed"] == 1
    [event] = await alice.events(lambda e: e["t"] == "system", 1)
    assert event["closed"] is True
    with pytest.raises(ConnectionClosed):
        await alice.recv_until(lambda f: False, timeout=TIMEOUT)
    assert alice.ws.close_code == 4410


async def test_sanction_across_rooms(app: App, join: Callable[..., Awaitable[WsClient]]) -> None:
    bob1 = await join("bob")
    bob2 = await join("bob", room="r2")
    body = {"action": "mute", "rooms": ["r1", "r2"], "duration": 60}
    assert (await _call(app, "POST", "/api/admin/users/bob/sanction", body={"action": "x", "rooms": ["r1"]}))[
        0
    ] == 400
    status, out = await _call(app, "POST", "/api/admin/users/bob/sanction", body=body)
    assert status == 200 and out["rooms"] == ["r1", "r2"]
    for ws in (bob1, bob2):
        notice = await ws.recv_until(lambda f: f["t"] == "notice")
        assert notice["action"] == "mute" and notice["by"] == "admin"
        await ws.send(t="danmaku", text="hello", cid=1)
        error = await ws.recv_until(lambda f: f["t"] == "error")
        assert error["code"] == 4401
    status, _ = await _call(
        app, "POST", "/api/admin/users/bob/sanction", body={"action": "ban", "rooms": ["r3"]}
    )
    assert status == 200
    url = f"ws://127.0.0.1:{app.port}/ws?token={token('r3', 'bob')}"
    from websockets.asyncio.client import connect

    async with connect(url) as ws:
        client = WsClient(ws)
        error = await client.recv()
        assert error["t"] == "error" and error["code"] == 4403


async def test_cors_for_the_dashboard(app: App) -> None:
    url = f"http://127.0.0.1:{app.http_port}/api/rooms/r1/stats"
    async with aiohttp.ClientSession() as http:
        async with http.options(
            url, headers={"Origin": "http://x", "Access-Control-Request-Method": "GET"}
        ) as r:
            assert r.status == 204 and "Authorization" in r.headers["Access-Control-Allow-Headers"]
        async with http.get(url) as r:  # an error still carries the header, so the page can show it
            assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.port}/dashboard.html") as r:
        assert r.status == 200 and "uplot.iife.min.js" in await r.text()
