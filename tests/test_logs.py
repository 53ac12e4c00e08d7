"""Structured logs: JSON lines, connection events with one request id per connection."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import App
from server.deadline import within
from server.logs import JsonFormatter, conn_log
from tests.conftest import TIMEOUT, WsClient


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    level = conn_log.level
    conn_log.addHandler(handler)
    conn_log.setLevel(logging.DEBUG)
    yield handler
    conn_log.removeHandler(handler)
    conn_log.setLevel(level)


def test_json_formatter_fields_and_exception() -> None:
    record = logging.LogRecord("liveroom.x", logging.ERROR, __file__, 1, "boom %d", (7,), None)
    record.fields = {"request_id": "abc"}
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == "boom 7" and out["level"] == "error" and out["request_id"] == "abc"
    assert "ValueError: bad" in out["exc"]


async def test_connection_events(app: App, join: Callable[..., Awaitable[WsClient]], lines: Lines) -> None:
    alice = await join("alice")
    await alice.send(t="leave")
    async with asyncio.timeout(TIMEOUT):
        while not any(e["event"] == "close" for e in lines.events()):
            await asyncio.sleep(0.01)
    joined, closed = [e for e in lines.events() if e["event"] in ("join", "close")]
    assert joined["event"] == "join" and joined["uid"] == "alice" and joined["room"] == "r1"
    assert closed["code"] == 1000 and closed["request_id"] == joined["request_id"]


async def test_refused_join_logged(app: App, lines: Lines) -> None:
    async with connect(f"ws://127.0.0.1:{app.port}/ws?token=junk") as ws:
        with pytest.raises(ConnectionClosed):
            await within(ws.recv(), TIMEOUT)
            await within(ws.recv(), TIMEOUT)
    refused = [e for e in lines.events() if e["event"] == "refused"]
    assert refused and refused[0]["level"] == "info" and refused[0]["code"] == 4101
