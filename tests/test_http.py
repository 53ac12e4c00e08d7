"""Plain HTTP routes on the WebSocket port, and a real server process with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import App
from server.deadline import within
from tests import prom
from tests.conftest import start_server_process, token


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


async def get(port: int, path: str) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(_get, port, path)


async def test_health_ready_metrics_static(app: App, join) -> None:
    assert (await get(app.port, "/healthz"))[0] == 200
    assert (await get(app.port, "/readyz"))[0] == 200
    _, _, body = await get(app.port, "/metrics")
    danmaku_before = prom.sample(body.decode(), "liveroom_messages_in_total", type="danmaku") or 0.0
    joins_before = prom.sample(body.decode(), "liveroom_joins_total") or 0.0
    a = await join("a")
    await a.send(t="danmaku", text="counted")
    await a.events(lambda e: e["t"] == "danmaku", 1)
    status, ctype, body = await get(app.port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert prom.sample(body.decode(), "liveroom_messages_in_total", type="danmaku") == danmaku_before + 1
    assert prom.sample(body.decode(), "liveroom_joins_total") == joins_before + 1
    status, ctype, body = await get(app.port, "/")
    assert status == 200 and ctype.startswith("text/html") and b"<html" in body.lower()
    assert (await get(app.port, "/room/demo"))[0] == 200
    assert (await get(app.port, "/../pyproject.toml"))[0] == 404
    assert (await get(app.port, "/nope.js"))[0] == 404


async def test_config_names_the_http_port(app: App) -> None:
    """The dashboard on the WebSocket port finds the stats API on the HTTP port (--http-port)."""
    status, ctype, body = await get(app.port, "/api/config")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {"http_url": f"http://127.0.0.1:{app.http_port}"}
    status, _, _ = await get(app.http_port, "/api/admin/health")  # it is that port indeed
    assert status in (200, 401)


async def test_dev_token_endpoint(app: App) -> None:
    status, _, body = await get(app.port, "/api/dev/token?room=demo&user=zoe&name=Zoe")
    assert status == 200
    tok = json.loads(body)["token"]
    async with connect(f"ws://127.0.0.1:{app.port}/ws?token={tok}") as ws:
        snap = msgpack.unpackb(await within(ws.recv(), 10))
        assert snap["you"] == {"uid": "zoe", "name": "Zoe", "role": "viewer"}
    assert (await get(app.port, "/api/dev/token?room=bad%20room&user=z"))[0] == 400
    app.config.dev_tokens = False
    assert (await get(app.port, "/api/dev/token?room=demo&user=zoe"))[0] == 404


async def test_sigterm_closes_clients_with_1012() -> None:
    proc, port = await asyncio.to_thread(start_server_process)
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws?token={token()}") as ws:
            assert msgpack.unpackb(await within(ws.recv(), 10))["t"] == "snapshot"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await within(ws.recv(), 20)
            assert info.value.rcvd.code == 1012
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        proc.kill()
