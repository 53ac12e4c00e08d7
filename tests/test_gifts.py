"""Gifts: catalogue, combos, leaderboard, idempotent cids, authorisation, gift.sent, abuse."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import connect

from server.app import App
from server.config import Config
from server.delivery.budget import Budget, sampleable
from server.room.gifts import Catalogue, CatalogueError, Combos, board_event, merge_gift, newer_board
from server.room.state import Room
from server.webhooks.sender import SIGNATURE_HEADER
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode
from tests.conftest import TIMEOUT, WsClient, token
from tests.local_http import serving

SECRET = "gift-secret-for-tests"
Join = Callable[..., Awaitable[WsClient]]


# -- the pure core -----------------------------------------------------------------------------


def test_catalogue_parses_yaml_and_json_and_refuses_bad_entries() -> None:
    yaml_text = "gifts:\n  - {id: kiss, name: Kiss, value: 3, tier: small}\n  - {id: car, name: Car, value: 900, tier: large}\n"
    cat = Catalogue.parse(yaml_text, "g.yaml")
    assert cat.get("car").value == 900 and cat.get("nope") is None
    assert Catalogue.parse('[{"id": "a", "name": "A", "value": 1}]', "g.json").get("a").tier == "small"
    for bad in (
        "[]",
        '[{"id": "a b", "name": "A", "value": 1}]',
        '[{"id": "a", "name": "A", "value": 0}]',
        '[{"id": "a", "name": "A", "value": 1, "tier": "huge"}]',
        '[{"id": "a", "name": "A", "value": 1}, {"id": "a", "name": "B", "value": 2}]',
        "{not yaml",
    ):
        with pytest.raises(CatalogueError):
            Catalogue.parse(bad, "g.yaml")


def test_combos_extend_within_the_window_and_restart_after_it() -> None:
    combos = Combos(window=3.0)
    assert combos.hit("r", "u", "rose", 1, 0.0, "g1") == ("g1", 1)
    assert combos.hit("r", "u", "rose", 2, 2.9, "g2") == ("g1", 3)  # extends: 2.9 s after the last
    assert combos.hit("r", "u", "star", 1, 3.0, "g3") == ("g3", 1)  # another gift: its own streak
    assert combos.hit("r", "v", "rose", 1, 3.0, "g4") == ("g4", 1)  # another sender too
    assert combos.hit("r", "u", "rose", 1, 5.8, "g5") == ("g1", 4)  # window counts from the last gift
    assert combos.hit("r", "u", "rose", 1, 8.9, "g6") == ("g6", 1)  # 3.1 s later: a new streak
    combos.sweep(100.0)
    assert len(combos) == 0


def test_a_streak_is_one_event_per_tick_and_the_newest_board_wins() -> None:
    outbox: list[dict[str, Any]] = []
    pending: dict[str, int] = {}
    for i in range(1, 4):
        event = {"t": "gift", "combo": "c1", "n": 1, "count": i, "ts": i, "cids": [i]}
        merge_gift(outbox, pending, event)
    merge_gift(outbox, pending, {"t": "gift", "combo": "c2", "n": 2, "count": 2, "ts": 9})
    assert [(e["combo"], e["n"], e["count"]) for e in outbox] == [("c1", 3, 3), ("c2", 2, 2)]
    assert outbox[0]["cids"] == [1, 2, 3]
    old, new = board_event(4, [], 0, "sys"), board_event(5, [], 0, "sys")
    assert newer_board(None, old) and newer_board(old, new) and not newer_board(new, old)
    room: Room[object] = Room("r")
    room.set_board(new)
    room.set_board(old)  # an older board credited on the same node later: not queued over the newer
    assert [e["ver"] for e in room.drain(0).events] == [5]
    room.apply("e", [{**old, "seq": 1}, {**new, "seq": 2}, {**old, "seq": 3}])  # sequenced out of order
    assert room.board is not None and room.board["ver"] == 5


def test_gift_events_are_never_sampled_under_overload() -> None:
    budget = Budget(above=1, per_frame=2)
    events = [{"t": "danmaku", "uid": f"u{i}", "seq": i} for i in range(1, 50)]
    events += [{"t": "gift", "uid": "g", "seq": 50 + i, "combo": "c", "n": 1, "count": i} for i in range(5)]
    assert not any(sampleable(e) for e in events if e["t"] == "gift")
    cut = budget.cut("r", events, 0.0)  # 49 danmaku in a frame: far over 1/s, a sample of 2
    assert cut is not None and cut.left, "the budget should have left danmaku out"
    assert [e for e in cut.events if e["t"] == "gift"] == events[-5:]


async def until_events(
    client: WsClient, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Every batch event the client receives until `done` holds for them."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while not done(seen):
            frame = await client.recv()
            if frame["t"] == "batch":
                seen.extend(frame["events"])
    return seen


# -- a node, end to end ---------------------------------------------------------------------------


@pytest.fixture
def config(config: Config) -> Config:
    config.combo_window = 3600.0  # a combo here never ends by time: the test does not race a clock
    return config


async def test_gift_combo_board_and_idempotent_cid(app: App, join: Join) -> None:
    host = await join("host", role="host")
    alice = await join("alice")
    for i in range(3):
        await alice.send(t="gift", gift="rose", cid=f"c{i}")
    acks = [await alice.recv_until(lambda f: f["t"] == "gift_ack") for _ in range(3)]
    assert [a["count"] for a in acks] == [1, 2, 3] and len({a["combo"] for a in acks}) == 1
    assert acks[-1]["balance"] == app.config.gift_demo_balance - 30
    await alice.send(t="gift", gift="rose", cid="c1")  # a retry: the first answer, nothing more
    again = await alice.recv_until(lambda f: f["t"] == "gift_ack")
    assert again == acks[1]
    await alice.send(t="gift", gift="star", count=2, cid="c9")
    seen = await until_events(host, lambda es: any(e["t"] == "board" and e["ver"] == 4 for e in es))
    rose = [e for e in seen if e["t"] == "gift" and e["gift"] == "rose"]
    assert {e["combo"] for e in rose} == {acks[0]["combo"]}  # one streak however the ticks cut it
    assert sum(e["n"] for e in rose) == 3 and rose[-1]["count"] == 3  # "x 3", the retry not in it
    star = [e for e in seen if e["t"] == "gift" and e["gift"] == "star"]
    assert [(e["n"], e["count"], e["value"], e["tier"]) for e in star] == [(2, 2, 50, "medium")]
    board = [e for e in seen if e["t"] == "board"][-1]
    assert board["top"] == [{"uid": "alice", "name": "alice", "score": 130}]  # the retry counted once
    late = await join("late")  # a joiner sees the board and the catalogue in its snapshot
    assert late.snapshot is not None
    assert late.snapshot["board"] == [{"uid": "alice", "name": "alice", "score": 130}]
    assert {g["id"] for g in late.snapshot["gifts"]} >= {"rose", "star", "rocket"}


async def test_unknown_gift_and_a_balance_too_low_are_refused(app: App, join: Join) -> None:
    app.config.gift_demo_balance = 600
    bob = await join("bob")
    await bob.send(t="gift", gift="yacht", cid=1)
    assert (await bob.recv_until(lambda f: f["t"] == "error"))["code"] == ErrorCode.GIFT_UNKNOWN
    await bob.send(t="gift", gift="rocket", cid=2)
    assert (await bob.recv_until(lambda f: f["t"] == "gift_ack"))["balance"] == 100
    await bob.send(t="gift", gift="rocket", cid=3)
    refused = await bob.recv_until(lambda f: f["t"] == "error")
    assert refused["code"] == ErrorCode.GIFT_REFUSED and refused["ref"] == 3
    await bob.send(t="gift", gift="rose", count=10, cid=4)  # exactly what is left
    assert (await bob.recv_until(lambda f: f["t"] == "gift_ack"))["balance"] == 0
    await bob.send(t="gift", gift="heart", count=0, cid=5)
    assert (await bob.recv_until(lambda f: f["t"] == "error"))["code"] == ErrorCode.BAD_FIELD


async def test_a_muted_user_cannot_gift(app: App, join: Join) -> None:
    host = await join("host", role="host")
    carol = await join("carol")
    await host.send(t="mod", action="mute", uid="carol", cid="m")
    await host.recv_until(lambda f: f["t"] == "mod_ack")
    async with asyncio.timeout(TIMEOUT):
        while True:  # the mute reaches carol's connection through the sanction watch
            await carol.send(t="gift", gift="heart", cid="x")
            frame = await carol.recv_until(lambda f: f["t"] in ("error", "gift_ack"))
            if frame["t"] == "error":
                break
    assert frame["code"] == ErrorCode.MUTED


# -- authorisation callback and gift.sent webhook ------------------------------------------------------


class Platform:
    """A real HTTP server on 127.0.0.1 playing the platform: authorises gifts, takes webhooks."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.hooks: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.never = asyncio.Event()  # never set: the `/slow` authorisation never answers

    def _verified(self, body: bytes, request: web.Request) -> bool:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected)

    async def authorize(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._verified(body, request):
            return web.Response(status=401)
        gift = json.loads(body)
        self.asked.append(gift)
        if gift["gift"] == "castle":
            return web.json_response({"allow": False, "reason": "no castles today"})
        if gift["gift"] == "rocket":
            await self.never.wait()
        return web.json_response({"allow": True, "balance": 42})

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self._verified(body, request):
            self.hooks.append(json.loads(body))
            self.changed.set()
        return web.Response(status=204)


@pytest.fixture
async def platform() -> AsyncIterator[tuple[Platform, str]]:
    rx = Platform()
    app = web.Application()
    app.router.add_post("/auth", rx.authorize)
    app.router.add_post("/hook", rx.hook)
    async with serving(app) as base:
        try:
            yield rx, base
        finally:
            rx.never.set()  # a callback still held open answers, so the server can stop


async def test_the_callback_authorises_refuses_or_times_out(
    platform: tuple[Platform, str], config: Config
) -> None:
    rx, base = platform
    config.gift_auth_url = f"{base}/auth"
    config.webhook_url, config.webhook_secret = f"{base}/hook", SECRET
    config.gift_auth_timeout = 60  # the platform's answers get all a slow machine needs ...
    app = App(config)
    await app.start()
    try:
        dan = WsClient(await connect(f"ws://127.0.0.1:{app.port}/ws?token={token('r1', 'dan')}"))
        await dan.recv()
        await dan.send(t="gift", gift="rose", cid="a")
        ack = await dan.recv_until(lambda f: f["t"] == "gift_ack")
        assert ack["balance"] == 42 and rx.asked[-1]["id"] == ack["id"] and rx.asked[-1]["value"] == 10
        await dan.send(t="gift", gift="castle", cid="b")
        no = await dan.recv_until(lambda f: f["t"] == "error")
        assert (no["code"], no["msg"]) == (ErrorCode.GIFT_REFUSED, "no castles today")
        assert app.gifts.callback is not None  # ... the rocket's, which never comes, meets 0.5 s
        app.gifts.callback.timeout = aiohttp.ClientTimeout(total=0.5)
        await dan.send(t="gift", gift="rocket", cid="c")
        late = await dan.recv_until(lambda f: f["t"] == "error")
        assert late["code"] == ErrorCode.GIFT_AUTH_UNAVAILABLE and late["retry_after"] == 1.0
        async with asyncio.timeout(TIMEOUT):
            while not any(h["type"] == "gift.sent" for h in rx.hooks):
                rx.changed.clear()
                await rx.changed.wait()
        sent = [h for h in rx.hooks if h["type"] == "gift.sent"]
        assert [h["id"] for h in sent] == [f"gift.sent:{ack['id']}"]  # the refused ones: none
        assert sent[0]["data"]["gift"] == "rose"
        await dan.close()
    finally:
        await app.stop()


async def test_gift_rate_limit(config: Config) -> None:
    config.rate_limits = "gift.conn=0.001/2"  # no refill: a slow machine's acks do not earn a third
    app = App(config)
    await app.start()
    try:
        eve = WsClient(await connect(f"ws://127.0.0.1:{app.port}/ws?token={token('r1', 'eve')}"))
        await eve.recv()
        codes = []
        for i in range(3):
            await eve.send(t="gift", gift="heart", cid=i)
            frame = await eve.recv_until(lambda f: f["t"] in ("gift_ack", "error"))
            codes.append(frame.get("code"))
        assert codes[:2] == [None, None] and codes[2] == ErrorCode.RATE_LIMITED
        await eve.close()
    finally:
        await app.stop()


# -- followers, scheduled lives, live notices ------------------------------------------------------


async def test_followers_anywhere_get_the_live_notice_and_offline_ones_a_webhook(
    platform: tuple[Platform, str], config: Config
) -> None:
    rx, base = platform
    config.webhook_url, config.webhook_secret = f"{base}/hook", SECRET
    app = App(config)
    await app.start()
    opened: list[WsClient] = []

    async def join(user: str, room: str, role: str = "viewer") -> WsClient:
        client = WsClient(await connect(f"ws://127.0.0.1:{app.port}/ws?token={token(room, user, role)}"))
        client.snapshot = await client.recv()
        opened.append(client)
        return client

    async def ask(client: WsClient, **frame: Any) -> dict[str, Any]:
        await client.send(**frame)
        return await client.recv_until(lambda f: f["t"] in ("error", f"{frame['t']}_ack", "follow_ack"))

    try:
        hana = await join("hana", "show", "host")
        fan1 = await join("fan1", "other")
        fan2 = await join("fan2", "other")
        res1 = await join("res1", "third")
        assert (await ask(fan1, t="follow", host="hana", cid=1))["followers"] == 1
        assert (await ask(fan2, t="follow", host="hana", cid=1))["followers"] == 2
        assert (await ask(fan1, t="follow", host="fan1"))["code"] == ErrorCode.FOLLOW_TARGET
        assert (await ask(fan1, t="schedule", at=2**40, title="x"))["code"] == ErrorCode.FORBIDDEN
        at = time.time_ns() // 1_000_000 + 60_000
        sched = await ask(hana, t="schedule", at=at, title="Spring sale")
        assert sched["t"] == "schedule_ack"
        assert (await ask(res1, t="reserve", host="hana", id=sched["id"]))["t"] == "reserve_ack"
        assert (await ask(res1, t="reserve", host="hana", id="nope"))["code"] == ErrorCode.FOLLOW_TARGET
        await hana.recv_until(lambda f: f["t"] == "batch" and any(e["t"] == "schedule" for e in f["events"]))
        viewer = await join("v", "show")  # the room shows what is scheduled
        assert viewer.snapshot is not None
        assert [(s["id"], s["title"]) for s in viewer.snapshot["schedules"]] == [(sched["id"], "Spring sale")]
        await fan2.close()  # offline: told by webhook (for a push notification)
        room = app.hub.rooms["show"]
        # what the media gateway does when hana's publish starts (WebRTC itself: test_redis_retention)
        room.set_live(Identity("hana", "hana", "show", "host"), True, app.node.node_id, None, 0)
        app.hub.dirty.add("show")
        notice = await fan1.recv_until(lambda f: f["t"] == "live_notice")
        assert (notice["host"], notice["room"]) == ("hana", "show")
        reserved = await res1.recv_until(lambda f: f["t"] == "live_notice")
        assert (reserved["title"], reserved["reserved"]) == ("Spring sale", True)
        async with asyncio.timeout(TIMEOUT):
            while not any(h["type"] == "host.live" for h in rx.hooks):
                rx.changed.clear()
                await rx.changed.wait()
        hook = next(h for h in rx.hooks if h["type"] == "host.live")
        assert hook["data"]["offline"] == ["fan2"] and hook["data"]["room"] == "show"
        gone = await viewer.recv_until(
            lambda f: f["t"] == "batch" and any(e["t"] == "schedule" and not e["on"] for e in f["events"])
        )
        assert gone["events"]
    finally:
        await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
        await app.stop()
