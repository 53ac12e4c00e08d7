"""Webhooks: signed, retried after a receiver failure, each event delivered once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from server.app import App
from server.config import Config
from server.deadline import within
from server.webhooks.sender import SIGNATURE_HEADER
from tests.conftest import TIMEOUT, WsClient
from tests.local_http import serving

SECRET = "webhook-secret-for-tests"


class Receiver:
    """A real HTTP receiver on 127.0.0.1 that answers 500 to the first `fail` requests."""

    def __init__(self, fail: int = 1, status: int = 500) -> None:
        self.fail = fail
        self.status = status
        self.attempts: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
            return web.Response(status=401)
        event = json.loads(body)
        self.attempts.append(event)
        self.changed.set()
        if len(self.attempts) <= self.fail:
            return web.Response(status=self.status)
        self.accepted.append(event)
        return web.Response(status=204)

    async def wait(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    async with serving(app) as base:
        yield rx, f"{base}/hook"


@pytest.fixture
def config(config: Config, receiver: tuple[Receiver, str]) -> Config:
    config.webhook_url = receiver[1]
    config.webhook_secret = SECRET
    config.analytics_flush = 3600.0  # flushed by the test
    return config


async def test_signed_retried_delivered_once(
    app: App, join: Callable[..., Awaitable[WsClient]], receiver: tuple[Receiver, str]
) -> None:
    rx, _ = receiver
    hooks = app.webhooks
    assert hooks is not None
    hooks.backoff = 0.01  # the retry schedule, not the test, decides when: keep it short
    host = await join("hank", role="host")
    await join("alice")
    await join("bob")
    await app.analytics.flush()
    await rx.wait(lambda: len(rx.accepted) == 3)
    kinds = [e["type"] for e in rx.accepted]
    assert kinds == ["room.started", "host.online", "viewers"]
    assert rx.attempts[0]["id"] == rx.attempts[1]["id"]  # the first failed, then the same event again
    assert rx.accepted[2]["data"] == {"room": "r1", "joined": ["alice", "bob"], "left": []}
    await host.close()
    await within(_until(lambda: app.analytics.open_sessions == 2), TIMEOUT)
    await app.analytics.flush()
    await rx.wait(lambda: len(rx.accepted) == 4)
    assert rx.accepted[3]["type"] == "host.offline"
    # one sender delivers in order: once a sentinel queued last arrives, any duplicate would have too
    hooks.emit("sentinel", {})
    await rx.wait(lambda: any(e["type"] == "sentinel" for e in rx.accepted))
    assert [e["type"] for e in rx.accepted[4:]] == ["sentinel"]
    ids = [e["id"] for e in rx.accepted]
    assert len(set(ids)) == len(ids)  # each delivered once
    await within(_until(lambda: hooks.delivered == 5), TIMEOUT)  # the sender saw each 2xx
    retries = REGISTRY.get_sample_value("liveroom_webhook_deliveries_total", {"result": "retry"})
    assert retries is not None and retries >= 1


async def test_moderation_event(
    app: App, join: Callable[..., Awaitable[WsClient]], receiver: tuple[Receiver, str]
) -> None:
    rx, _ = receiver
    rx.fail = 0
    host = await join("hank", role="host")
    await join("alice")
    await host.send(t="mod", action="mute", uid="alice", cid=1)
    await host.recv_until(lambda f: f["t"] == "mod_ack")  # the action was applied (and emitted)
    app.webhooks.emit("sentinel", {})  # type: ignore[union-attr]
    await rx.wait(lambda: any(e["type"] == "sentinel" for e in rx.accepted))
    [event] = [e for e in rx.accepted if e["type"] == "moderation"]  # once, even after waiting past it
    assert event["data"]["uid"] == "alice" and event["data"]["action"] == "mute"


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_client_error_not_retried(
    app: App, join: Callable[..., Awaitable[WsClient]], receiver: tuple[Receiver, str]
) -> None:
    rx, _ = receiver
    rx.status = 400  # the first event is refused for good; later ones are accepted
    hooks = app.webhooks
    assert hooks is not None
    hooks.backoff = 0.01
    dropped = REGISTRY.get_sample_value("liveroom_webhook_deliveries_total", {"result": "dropped"}) or 0.0
    await join("alice")
    await app.analytics.flush()  # room.started (refused with 400), then viewers
    await rx.wait(lambda: len(rx.accepted) == 1)
    assert [e["type"] for e in rx.attempts] == ["room.started", "viewers"]  # no second attempt
    assert (
        REGISTRY.get_sample_value("liveroom_webhook_deliveries_total", {"result": "dropped"}) == dropped + 1
    )
