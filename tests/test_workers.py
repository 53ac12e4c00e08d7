"""`liveroom serve --workers 2`: two node processes on one port, one local Redis between them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from websockets.asyncio.client import connect

from tests.conftest import WsClient, start_server_process, token
from tests.redis_fixtures import NODE_ENV, WAIT, requires_redis

pytestmark = requires_redis


async def test_two_workers_share_the_port_and_the_rooms() -> None:
    proc, port = start_server_process("--workers", "2", env=NODE_ENV)
    clients: list[WsClient] = []
    try:
        by_node: dict[str, WsClient] = {}
        for i in range(200):  # the kernel spreads connections: soon both workers have one
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token('shared', f'u{i}')}")
            client = WsClient(ws)
            client.snapshot = await client.recv()
            clients.append(client)
            by_node.setdefault(client.snapshot["node"], client)
            if len(by_node) == 2:
                break
        assert len(by_node) == 2, by_node.keys()
        first, second = by_node.values()
        await first.send(t="danmaku", text="across workers")
        (event,) = await second.events(lambda e: e["t"] == "danmaku", 1)  # through the shared Redis
        assert event["text"] == "across workers"
    finally:
        for client in clients:
            await client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def test_workers_without_redis_server_say_what_to_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--workers", "3", "--port", "0"],
        env={**os.environ, "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert "redis-server --port 6379" in result.stderr
    assert "liveroom serve --workers 3 --redis redis://127.0.0.1:6379/0" in result.stderr
