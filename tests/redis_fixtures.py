"""A real redis-server on a free port and liveroom node processes against it (no mocks).

Imported by the Redis test modules: `from tests.redis_fixtures import *` brings the fixtures.
Every wait polls a condition with a generous timeout; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from tests import prom
from tests.conftest import WsClient, start_server_process, token

WAIT = 30.0  # seconds: generous, a loaded 2-core machine must pass
# the core of these tests is throughput across nodes, not the abuse limits
NODE_ENV = {
    "LIVEROOM_RATE_LIMITS": "off",
    "LIVEROOM_REPEAT_MAX": "0",
    "LIVEROOM_CONTACT_FILTER": "off",
    "LIVEROOM_ABUSE_STRIKES": "0",
}

requires_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(condition: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Check condition until it holds; fail after timeout (used from threads and setup code)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def apoll(condition: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Async variant: condition may be a coroutine function."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.02)


class RedisServer:
    """redis-server as a child process; `persistent` keeps an always-fsynced AOF across restarts."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *persistence,
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        poll(self.ping, what="redis-server to answer PING")

    def ping(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def stop(self) -> None:
        """Graceful (SIGTERM): with persistence on, everything acknowledged is on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self.proc = None


class NodeProc:
    """A `python -m server serve --redis URL` process."""

    def __init__(self, redis_url: str, node_id: str, *args: str) -> None:
        self.node_id = node_id
        self.proc, self.port = start_server_process(
            "--redis",
            redis_url,
            "--tick-ms",
            "20",
            "--presence-ttl",
            "1.5",
            "--node-id",
            node_id,
            *args,
            env=NODE_ENV,
        )
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def ready(self) -> bool:
        return self.http("/readyz")[0] == 200

    async def wait_ready(self, ready: bool = True) -> None:
        await apoll(
            lambda: asyncio.to_thread(lambda: self.ready() == ready), what=f"{self.node_id} ready={ready}"
        )

    def metric(self, name: str) -> float:
        """The node's counter `name`, summed over its labels (parsed as Prometheus does)."""
        _, body = self.http("/metrics")
        return prom.total(body, name)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway Redis (no persistence), stopped by PID after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that survives restarts with its data (AOF, fsync on every write)."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_nodes() -> Iterator[Callable[..., list[NodeProc]]]:
    """start_nodes(redis_url, n, *args): n node processes, stopped after the test."""
    started: list[NodeProc] = []

    def _start(redis_url: str, count: int, *args: str) -> list[NodeProc]:
        nodes = [NodeProc(redis_url, f"n{len(started) + i}", *args) for i in range(count)]
        started.extend(nodes)
        return nodes

    yield _start
    for node in started:
        with contextlib.suppress(Exception):
            node.stop()


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[..., Any]]:
    """open_client(node, user, room, resume=None): a joined WsClient (snapshot read)."""
    opened: list[WsClient] = []

    async def _open(
        node: NodeProc, user: str, room: str = "r1", resume: dict[str, Any] | None = None, **kw: Any
    ) -> WsClient:
        ws = await connect(node.ws_url, **kw)
        client = WsClient(ws)
        frame: dict[str, Any] = {"t": "join", "token": token(room, user, kw.pop("role", "viewer"))}
        if resume is not None:
            frame["resume"] = resume
        await client.send(**frame)
        client.snapshot = await client.recv()
        assert client.snapshot["t"] == "snapshot", client.snapshot
        opened.append(client)
        return client

    yield _open
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


__all__ = [
    "WAIT",
    "NodeProc",
    "RedisServer",
    "apoll",
    "free_port",
    "open_client",
    "persistent_redis",
    "poll",
    "redis_server",
    "requires_redis",
    "start_nodes",
]
