"""Shared fixtures: a real server on a free loopback port, real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server import metrics
from server.app import App
from server.config import DEFAULT_SECRET, Config
from server.deadline import within
from server.wire import auth

SECRET = DEFAULT_SECRET
LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
TIMEOUT = 20.0  # generous: tests must pass on a loaded 2-core machine
# pytester: tests/test_ci_skips.py runs pytest on small files; tests.ci_skips: no skips under CI=true;
# tests.async_timeout: a hung async test fails alone (pytest-timeout cannot stop it);
# tests.child_logs: a failed test's report shows its node processes' logs
pytest_plugins = ["pytester", "tests.ci_skips", "tests.async_timeout", "tests.child_logs"]
# Server processes the tests start (browser pages' servers, Redis nodes, load_tests' bench servers)
# inherit this: on a loaded machine their event loop lags for reasons that are not the test's, and
# the lag gate would refuse joins (4302) at random. As in `config` below; tests of the gate set it.
os.environ.setdefault("LIVEROOM_MAX_LOOP_LAG", "0")


class WsClient:
    """A test client speaking the msgpack protocol over a real WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.snapshot: dict[str, Any] | None = None
        self._leftover: list[dict[str, Any]] = []  # batch events received but not yet asked for

    async def send(self, **frame: Any) -> None:
        await self.ws.send(msgpack.packb(frame))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return msgpack.unpackb(await within(self.ws.recv(), timeout))

    async def recv_until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """Receive frames until one matches; fail on timeout."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if pred(frame):
                    return frame

    async def events(self, pred: Callable[[dict[str, Any]], bool], count: int) -> list[dict[str, Any]]:
        """Collect `count` batch events matching pred, in arrival order."""
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT):
            while len(found) < count:
                if not self._leftover:
                    frame = await self.recv()
                    if frame["t"] == "batch":
                        self._leftover = list(frame["events"])
                    continue
                event = self._leftover.pop(0)
                if pred(event):
                    found.append(event)
        return found

    async def close(self) -> None:
        """Close, reading what is still queued meanwhile: websockets reads nothing more while its
        queue is full, so a client that stopped reading would wait out the 10 s close timeout."""
        drain = asyncio.create_task(self._discard())
        try:
            await self.ws.close()
        finally:
            drain.cancel()

    async def _discard(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.recv()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_loops: also run on the stock asyncio loop (where the two loops differ)"
    )


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Async tests run on uvloop, as `liveroom serve` does; tests marked `both_loops` (transport
    buffers, aborts, timeouts: where the loops' I/O differs) on the stock loop as well."""
    if item.get_closest_marker("both_loops") is not None:
        return dict(LOOPS)
    return {"uvloop": LOOPS["uvloop"]}


def token(room: str = "r1", user: str = "alice", role: auth.Role = "viewer", **kw: Any) -> str:
    return auth.mint(SECRET, room=room, user=user, role=role, **kw)


@pytest.fixture
def config() -> Config:
    # core tests send bursts far beyond the abuse limits; tests/test_abuse*.py turn them back on
    return Config(
        port=0,
        http_port=0,
        tick_ms=20,
        node_id="test-node",
        join_timeout=2.0,
        rate_limits="off",
        repeat_max=0,
        max_loop_lag=0,  # tests share the loop with their clients: no lag-based join refusals
    )


@pytest.fixture
async def app(config: Config) -> AsyncIterator[App]:
    app = App(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
def url(app: App) -> str:
    return f"ws://127.0.0.1:{app.port}/ws"


@pytest.fixture
async def join(url: str) -> AsyncIterator[Callable[..., Any]]:
    """Connect with a token in the query string and read the snapshot."""
    opened: list[WsClient] = []

    async def _join(user: str = "alice", room: str = "r1", role: auth.Role = "viewer", **kw: Any) -> WsClient:
        ws = await connect(f"{url}?token={token(room, user, role)}", **kw)
        client = WsClient(ws)
        client.snapshot = await client.recv()
        assert client.snapshot["t"] == "snapshot", client.snapshot
        opened.append(client)
        return client

    yield _join
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


def start_server_process(
    *args: str, env: dict[str, str] | None = None, log: Any = None
) -> tuple[subprocess.Popen[str], int]:
    """Run `python -m server serve --port 0` and read the port it printed; `log`: a file for
    its log lines (stderr)."""
    if log is None:
        log = None if os.environ.get("LIVEROOM_TEST_NODE_LOGS") else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--http-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server printed its address
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    port = int(line.split("http://127.0.0.1:")[1].split()[0])
    return proc, port


@pytest.fixture
def server_faults(caplog: pytest.LogCaptureFixture) -> Any:
    """Fails the test on a server fault while it ran: any ERROR log record or traceback (the
    server's or its libraries': websockets, aiohttp), any 4999 internal error sent to a client."""
    internal = metrics.rejections.labels(reason="internal")
    before = internal._value.get()
    caplog.set_level(logging.INFO)
    yield
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not faults, "\n".join(f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in faults)
    assert internal._value.get() == before, "the server sent 4999 internal error"
