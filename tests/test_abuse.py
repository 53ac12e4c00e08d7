# ruff: noqa: RUF001  (full-width and look-alike characters are the point of some tests)
"""Abuse resistance end to end: one test per attack, each asserting the attacker's error and that an
honest viewer in the same room still gets every message. Real server, real WebSocket clients.

Every attacker sends a burst far larger than the bucket it attacks, so the assertions never depend
on timing; the honest viewer connects from another loopback address (127.0.0.2) so that per-IP
limits aimed at the attacker (127.0.0.3) do not touch it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import msgpack
import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.abuse.content import WordList
from server.app import App
from server.deadline import within
from server.wire import auth
from server.wire.protocol import ErrorCode
from tests.conftest import TIMEOUT, WsClient, token

HONEST_IP = "127.0.0.2"
ATTACKER_IP = "127.0.0.3"
# Generous per-scope limits so honest traffic never trips them; each test tightens what it attacks.
BASE_LIMITS = "danmaku.conn=5/10,danmaku.user=8/16,danmaku.ip=50/100,join.ip=100/200,join.user=50/50"


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> dict[str, Any]:
    return getattr(request, "param", {})


@pytest.fixture
def config(config, limits):
    config.rate_limits = BASE_LIMITS
    config.repeat_max = 3
    config.max_loop_lag = 0  # the test process shares the loop with its clients: judge lag explicitly
    for key, value in limits.items():
        setattr(config, key, value)
    return config


def tune(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("limits", [overrides], indirect=True)


def _sock(app: App, ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((ip, 0))
    sock.connect(("127.0.0.1", app.port))
    return sock


_opened: list[WsClient] = []


@pytest.fixture(autouse=True)
async def _abort_clients(app: App) -> Any:
    """Drop every test connection before the server stops: a flooder that never read its errors
    would otherwise hold the graceful close for its whole timeout."""
    yield
    for client in _opened:
        if client.ws.transport is not None:
            client.ws.transport.abort()
    _opened.clear()


async def open_ws(app: App, ip: str, query: str = "", **kw: Any) -> WsClient:
    ws = await connect(f"ws://127.0.0.1:{app.port}/ws{query}", sock=_sock(app, ip), **kw)
    client = WsClient(ws)
    _opened.append(client)
    return client


async def join_as(
    app: App,
    user: str,
    ip: str = HONEST_IP,
    role: auth.Role = "viewer",
    room: str = "r1",
    tok: str | None = None,
) -> WsClient:
    client = await open_ws(app, ip, f"?token={tok or token(room, user, role)}")
    client.snapshot = await client.recv()
    assert client.snapshot["t"] == "snapshot", client.snapshot
    return client


async def refused(app: App, user: str, ip: str = ATTACKER_IP, **kw: Any) -> tuple[dict[str, Any], int]:
    """Join and expect an error frame then a close: (error frame, close code)."""
    client = await open_ws(app, ip, f"?token={kw.pop('tok', None) or token(user=user, **kw)}")
    error = await client.recv()
    with pytest.raises(ConnectionClosed) as info:
        await client.recv_until(lambda f: False)
    assert info.value.rcvd is not None
    return error, info.value.rcvd.code


async def error_of(client: WsClient, code: ErrorCode) -> dict[str, Any]:
    return await client.recv_until(lambda f: f["t"] == "error" and f["code"] == code)


async def honest_exchange(sender: WsClient, *viewers: WsClient, n: int = 3, tag: str = "honest") -> None:
    """The sender's n messages reach every viewer, all of them, in order."""
    uid = sender.snapshot["you"]["uid"]  # type: ignore[index]
    texts = [f"{tag} {i}" for i in range(n)]
    for text in texts:
        await sender.send(t="danmaku", text=text)
    for viewer in (sender, *viewers):
        got = await viewer.events(
            lambda e, uid=uid: e["t"] == "danmaku" and e["uid"] == uid and e["text"].startswith(tag), n
        )
        assert [e["text"] for e in got] == texts


async def flood(client: WsClient, times: int, **frame: Any) -> None:
    for i in range(times):
        await client.send(**{k: (v.format(i=i) if isinstance(v, str) else v) for k, v in frame.items()})


# -- rate limits -----------------------------------------------------------------------------------


async def test_danmaku_flood_per_connection(app: App) -> None:
    host = await join_as(app, "host", role="host")
    viewer = await join_as(app, "viewer")
    attacker = await join_as(app, "mallory", ip=ATTACKER_IP)
    await flood(attacker, 200, t="danmaku", text="spam {i}", cid="{i}")
    err = await error_of(attacker, ErrorCode.RATE_LIMITED)
    assert err["retry_after"] > 0 and "conn" in err["msg"] and err["ref"].isdigit()
    await honest_exchange(host, viewer)
    await honest_exchange(viewer, host, tag="reply")


@tune(rate_limits=BASE_LIMITS + ",danmaku.conn=100/100,danmaku.user=2/4")
async def test_danmaku_flood_per_user_across_connections(app: App) -> None:
    viewer = await join_as(app, "viewer")
    conns = [await join_as(app, "mallory", ip=ATTACKER_IP) for _ in range(3)]
    for conn in conns:  # each connection alone is well under its own limit
        await flood(conn, 10, t="danmaku", text="dup {i}")
    err = await error_of(conns[-1], ErrorCode.RATE_LIMITED)
    assert "user" in err["msg"]
    await honest_exchange(viewer)


@tune(rate_limits=BASE_LIMITS + ",danmaku.conn=100/100,danmaku.user=100/100,danmaku.ip=2/6")
async def test_danmaku_flood_per_ip(app: App) -> None:
    viewer = await join_as(app, "viewer")
    sybils = [await join_as(app, f"sybil{i}", ip=ATTACKER_IP) for i in range(4)]
    for sybil in sybils:
        await flood(sybil, 10, t="danmaku", text="sybil {i}")
    err = await error_of(sybils[-1], ErrorCode.RATE_LIMITED)
    assert "ip" in err["msg"]
    await honest_exchange(viewer)


@tune(rate_limits=BASE_LIMITS + ",like.conn=0.001/5")  # a burst of 5, then no refill within the test
async def test_like_flood(app: App) -> None:
    viewer = await join_as(app, "viewer")
    attacker = await join_as(app, "mallory", ip=ATTACKER_IP)
    await flood(attacker, 100, t="like", count=100)
    err = await error_of(attacker, ErrorCode.RATE_LIMITED)
    assert "like" in err["msg"]
    # exactly the burst's 5 frames of 100 likes got through, whatever the timing: 500, never 10,000
    await viewer.events(lambda e: e["t"] == "likes" and e["total"] >= 500, 1)
    await honest_exchange(viewer)
    assert app.hub.rooms["r1"].likes_total == 500
    assert all(e["total"] <= 500 for e in viewer._leftover if e["t"] == "likes")


@tune(rate_limits=BASE_LIMITS + ",dm.conn=1/3")
async def test_dm_flood(app: App) -> None:
    viewer = await join_as(app, "viewer")
    attacker = await join_as(app, "mallory", ip=ATTACKER_IP)
    await flood(attacker, 50, t="dm", to="viewer", text="buy {i}")
    err = await error_of(attacker, ErrorCode.RATE_LIMITED)
    assert "dm" in err["msg"]
    await honest_exchange(viewer)


@tune(rate_limits=BASE_LIMITS + ",frame.conn=5/20", abuse_strikes=0)
async def test_frame_flood_refused_before_decoding(app: App) -> None:
    viewer = await join_as(app, "viewer")
    attacker = await join_as(app, "mallory", ip=ATTACKER_IP)
    for _ in range(200):
        await attacker.send(t="ping")
    err = await error_of(attacker, ErrorCode.RATE_LIMITED)
    assert "frame" in err["msg"]
    await honest_exchange(viewer)


@tune(abuse_strikes=20)
async def test_garbage_flood_closes_with_abusive(app: App) -> None:
    viewer = await join_as(app, "viewer")
    attacker = await join_as(app, "mallory", ip=ATTACKER_IP)
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(500):
            await attacker.ws.send(b"\xc1garbage")
        await attacker.recv_until(lambda f: False)
    assert info.value.rcvd is not None and info.value.rcvd.code == ErrorCode.ABUSIVE
    await honest_exchange(viewer)


@tune(rate_limits=BASE_LIMITS + ",danmaku.room=0.001/3")  # a burst of 3, no refill within the test
async def test_room_budget_sheds_viewers_not_hosts(app: App) -> None:
    host = await join_as(app, "host", role="host")
    viewer = await join_as(app, "viewer")
    chatty = [await join_as(app, f"fan{i}", ip=ATTACKER_IP) for i in range(3)]
    shed_before = REGISTRY.get_sample_value("liveroom_danmaku_shed_total") or 0.0
    for fan in chatty:
        await flood(fan, 5, t="danmaku", text="fan {i}", cid="{i}")
    # every fan still sees all of its own messages (shed ones as an unsequenced echo)
    shed = 0
    for i, fan in enumerate(chatty):
        mine = await fan.events(lambda e, i=i: e["t"] == "danmaku" and e["uid"] == f"fan{i}", 5)
        assert sorted(e["text"] for e in mine) == [f"fan {j}" for j in range(5)]
        shed += sum(1 for e in mine if "seq" not in e)
    # the budget (burst 3, no refill however slow the machine) shed the other 12, and the
    # metric counted exactly those
    assert shed == 15 - 3
    assert REGISTRY.get_sample_value("liveroom_danmaku_shed_total") == shed_before + shed
    # the viewer sees the sequenced fan messages only: none of the shed ones
    fans_seen = await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"].startswith("fan"), 15 - shed)
    assert all("seq" in e for e in fans_seen)
    # the host is above the budget: every host message reaches the viewer, and no shed one follows
    await honest_exchange(host, viewer, n=5)
    assert not [e for e in viewer._leftover if e["t"] == "danmaku" and e["uid"].startswith("fan")]


# -- connections and joins -------------------------------------------------------------------------------


@tune(max_conns_per_ip=3)
async def test_connection_cap_per_ip(app: App) -> None:
    viewer = await join_as(app, "viewer")
    held = [await join_as(app, f"m{i}", ip=ATTACKER_IP) for i in range(3)]
    error, code = await refused(app, "m9")
    assert error["code"] == ErrorCode.TOO_MANY_CONNECTIONS and code == ErrorCode.TOO_MANY_CONNECTIONS
    await held[0].close()
    await honest_exchange(viewer)


@tune(max_conns_per_user=2)
async def test_connection_cap_per_user(app: App) -> None:
    viewer = await join_as(app, "viewer")
    [await join_as(app, "mallory", ip=ATTACKER_IP) for _ in range(2)]
    error, code = await refused(app, "mallory", ip="127.0.0.4")  # another address does not help
    assert error["code"] == code == ErrorCode.TOO_MANY_CONNECTIONS
    await honest_exchange(viewer)


@tune(rate_limits=BASE_LIMITS + ",join.ip=0.001/3")  # no refill: "late" is refused however slow the joins
async def test_join_flood_per_ip(app: App) -> None:
    viewer = await join_as(app, "viewer")
    codes = []
    for i in range(10):
        try:
            await join_as(app, f"j{i}", ip=ATTACKER_IP)
        except (AssertionError, ConnectionClosed):
            codes.append(i)
    error, code = await refused(app, "late")
    assert error["code"] == code == ErrorCode.JOIN_THROTTLED and error["retry_after"] > 0
    assert codes  # the burst was cut
    await honest_exchange(viewer)


async def test_admission_refuses_fast_when_saturated(app: App) -> None:
    viewer = await join_as(app, "viewer")
    guard = app.guard
    guard.gate.max_lag = 0.5
    guard.lag.value = 5.0  # as if the event loop were seconds behind
    error, code = await refused(app, "newcomer", ip=HONEST_IP)
    assert error["code"] == code == ErrorCode.NODE_BUSY and error["retry_after"] >= 1
    guard.lag.value = 0.0
    guard.gate.max_inflight, guard.gate.inflight = 1, 1  # as if a join were in flight
    error, _ = await refused(app, "newcomer", ip=HONEST_IP)
    assert error["code"] == ErrorCode.NODE_BUSY and 0 < error["retry_after"] <= 2
    guard.gate.inflight = 0
    await join_as(app, "newcomer")
    await honest_exchange(viewer)


@pytest.mark.both_loops
async def test_handshake_timeout_closes_silent_sockets(app: App, config) -> None:
    viewer = await join_as(app, "viewer")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finishes the handshake
    answer = await within(reader.read(), TIMEOUT)  # read() returns at EOF: the server hung up
    assert reader.at_eof() and b"101" not in answer  # and never switched protocols
    writer.close()
    # a socket that finishes the handshake but never joins is closed too (AUTH_TIMEOUT)
    silent = await open_ws(app, ATTACKER_IP)
    err = await silent.recv()
    assert err["code"] == ErrorCode.AUTH_TIMEOUT
    await honest_exchange(viewer)


# -- content -------------------------------------------------------------------------------------------


@pytest.fixture
def words(tmp_path: Any, app: App) -> Any:
    """A banned-words file, loaded as --banned-words would load it."""
    path = tmp_path / "banned.txt"
    path.write_text("scam\n坏蛋\n[mask]\ndarn\n傻瓜\n[shadow]\nbuy followers\n", encoding="utf-8")
    app.guard.words = WordList(str(path))
    return path


async def test_banned_word_rejected_with_tricky_unicode(words, app: App) -> None:
    viewer = await join_as(app, "viewer")
    attacker = await join_as(app, "mallory", ip=ATTACKER_IP)
    for i, text in enumerate(["SCAM", "ｓｃａｍ here", "s\u200bc\u200da\u2060m!", "大坏蛋", "Ｓc\u00adAM"]):
        await attacker.send(t="danmaku", text=text, cid=i)
        err = await error_of(attacker, ErrorCode.CONTENT_REJECTED)
        assert err["ref"] == i
    await attacker.send(t="danmaku", text="a clean one")
    # the first message of mallory's the viewer ever sees is the clean one: none of the five
    [first] = await viewer.events(lambda e: e.get("uid") == "mallory", 1)
    assert first["text"] == "a clean one"
    await honest_exchange(viewer)


async def test_banned_word_masked_in_original_text(words, app: App) -> None:
    viewer = await join_as(app, "viewer")
    sender = await join_as(app, "sender", ip=ATTACKER_IP)
    await sender.send(t="danmaku", text="oh ＤＡ\u200bRN, 你是傻瓜")
    (event,) = await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"] == "sender", 1)
    assert event["text"] == "oh *****, 你是**"
    await honest_exchange(viewer)


async def test_shadow_drop_only_the_sender_sees_it(words, app: App) -> None:
    viewer = await join_as(app, "viewer")
    spammer = await join_as(app, "spammer", ip=ATTACKER_IP)
    await spammer.send(t="danmaku", text="Buy Followers cheap", cid="s1")
    (echo,) = await spammer.events(lambda e: e["t"] == "danmaku" and e.get("cid") == "s1", 1)
    assert echo["text"] == "Buy Followers cheap" and echo["uid"] == "spammer"
    await spammer.send(t="danmaku", text="a normal line", cid="s2")
    got = await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"] == "spammer", 1)
    assert got[0]["cid"] == "s2"  # the shadow-dropped one never arrived before it
    await honest_exchange(viewer)


async def test_words_reloaded_at_run_time(words, app: App) -> None:
    viewer = await join_as(app, "viewer")
    words.write_text("newword\n", encoding="utf-8")
    app.guard.reload()  # what SIGHUP does (an mtime change is picked up within seconds too)
    await viewer.send(t="danmaku", text="a NewWord here")
    await error_of(viewer, ErrorCode.CONTENT_REJECTED)
    await viewer.send(t="danmaku", text="scam is fine now")
    await viewer.events(lambda e: e["t"] == "danmaku" and e["text"] == "scam is fine now", 1)


async def test_contact_spam(app: App) -> None:
    host = await join_as(app, "host", role="host")
    viewer = await join_as(app, "viewer")
    spammer = await join_as(app, "spammer", ip=ATTACKER_IP)
    for text in (
        "cheap at www.example.shop",
        "加微信 abc12345",
        "ＱＱ：１２３４５６７８",
        "call 138 1234 5678",
    ):
        await spammer.send(t="danmaku", text=text)
        await error_of(spammer, ErrorCode.CONTACT_SPAM)
    await host.send(t="danmaku", text="merch at shop.example.com")  # hosts may post links
    (event,) = await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"] == "host", 1)
    assert event["text"] == "merch at shop.example.com"
    await viewer.send(t="danmaku", text="6666666666")  # cheering is not a phone number
    await viewer.events(lambda e: e["t"] == "danmaku" and e["text"] == "6666666666", 1)
    await honest_exchange(host, viewer)


async def test_repeat_detection(app: App) -> None:
    viewer = await join_as(app, "viewer")
    spammer = await join_as(app, "spammer", ip=ATTACKER_IP)
    for text in ("BUY NOW", "buy now!", "Buy  Now!!!", "ｂｕｙ ｎｏｗ"):
        await spammer.send(t="danmaku", text=text)
    err = await error_of(spammer, ErrorCode.REPEATED)
    assert err["retry_after"] > 0
    await spammer.send(t="danmaku", text="something else")
    # the viewer got the first three (repeat_max) and then the next different one: not the fourth
    got = await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"] == "spammer", 4)
    assert [e["text"] for e in got] == ["BUY NOW", "buy now!", "Buy  Now!!!", "something else"]
    await honest_exchange(viewer)


# -- moderation ------------------------------------------------------------------------------------------


async def test_mute_then_unmute(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="liveroom.abuse.mod")
    host = await join_as(app, "host", role="host")
    viewer = await join_as(app, "viewer")
    troll = await join_as(app, "troll", ip=ATTACKER_IP)
    await host.send(t="mod", action="mute", uid="troll", duration=600, cid="m1")
    ack = await host.recv_until(lambda f: f["t"] == "mod_ack")
    assert ack["cid"] == "m1" and ack["uid"] == "troll" and ack["until"] > 0
    notice = await troll.recv_until(lambda f: f["t"] == "notice")
    assert notice["action"] == "mute" and notice["until"] == ack["until"]
    await troll.send(t="danmaku", text="hello?")
    err = await error_of(troll, ErrorCode.MUTED)
    assert 0 < err["retry_after"] <= 600
    await honest_exchange(host, viewer)
    # reconnecting does not shed a mute
    await troll.close()
    troll = await join_as(app, "troll", ip=ATTACKER_IP)
    await troll.send(t="danmaku", text="again?")
    await error_of(troll, ErrorCode.MUTED)
    await host.send(t="mod", action="unmute", uid="troll")
    await troll.recv_until(lambda f: f["t"] == "notice" and f["action"] == "unmute")
    await troll.send(t="danmaku", text="sorry")
    await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"] == "troll", 1)
    records = [
        json.loads(r.getMessage().split(" ", 1)[1]) for r in caplog.records if "moderation" in r.getMessage()
    ]
    assert {"action": "mute", "room": "r1", "by": "host", "role": "host", "uid": "troll"}.items() <= records[
        0
    ].items()


async def test_kick_and_cool_down(app: App) -> None:
    mod = await join_as(app, "mod", role="moderator")
    viewer = await join_as(app, "viewer")
    troll = await join_as(app, "troll", ip=ATTACKER_IP)
    await mod.send(t="mod", action="kick", uid="troll", duration=300)
    err = await error_of(troll, ErrorCode.KICKED)
    assert err["retry_after"] > 0
    with pytest.raises(ConnectionClosed) as info:
        await troll.recv_until(lambda f: False)
    assert info.value.rcvd.code == ErrorCode.KICKED
    error, code = await refused(app, "troll")
    assert error["code"] == code == ErrorCode.KICKED
    await honest_exchange(mod, viewer)


async def test_ban_survives_reconnect_until_unban(app: App) -> None:
    host = await join_as(app, "host", role="host")
    viewer = await join_as(app, "viewer")
    troll = await join_as(app, "troll", ip=ATTACKER_IP)
    other_room = await join_as(app, "troll", ip=ATTACKER_IP, room="r2")
    await host.send(t="mod", action="ban", uid="troll", reason="spam")
    await error_of(troll, ErrorCode.BANNED)
    error, code = await refused(app, "troll")
    assert error["code"] == code == ErrorCode.BANNED and "retry_after" not in error
    await other_room.send(t="ping")  # a ban is per room
    await other_room.recv_until(lambda f: f["t"] == "pong")
    await honest_exchange(host, viewer)
    await host.send(t="mod", action="unban", uid="troll")
    await host.recv_until(lambda f: f["t"] == "mod_ack" and f["action"] == "unban")
    await join_as(app, "troll", ip=ATTACKER_IP)


async def test_moderation_needs_the_role(app: App) -> None:
    host = await join_as(app, "host", role="host")
    viewer = await join_as(app, "viewer")
    mod = await join_as(app, "mod", role="moderator")
    attacker = await join_as(app, "mallory", ip=ATTACKER_IP)
    await attacker.send(t="mod", action="ban", uid="viewer", cid=1)
    assert (await error_of(attacker, ErrorCode.FORBIDDEN))["ref"] == 1
    await honest_exchange(host, mod, tag="on air")  # the host's `host` event is sequenced by now
    await mod.send(t="mod", action="ban", uid="host")
    await error_of(mod, ErrorCode.MOD_TARGET)
    await mod.send(t="mod", action="mute", uid="mod")
    await error_of(mod, ErrorCode.MOD_TARGET)
    await honest_exchange(host, viewer)


async def test_delete_is_sequenced_and_leaves_snapshots(app: App) -> None:
    host = await join_as(app, "host", role="host")
    viewer = await join_as(app, "viewer")
    troll = await join_as(app, "troll", ip=ATTACKER_IP)
    await troll.send(t="danmaku", text="something awful")
    (bad,) = await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"] == "troll", 1)
    await host.send(t="mod", action="delete", seq=bad["seq"])
    for client in (viewer, troll, host):
        (deleted,) = await client.events(lambda e: e["t"] == "delete", 1)
        assert deleted["target"] == bad["seq"] and deleted["seq"] > bad["seq"]
    late = await join_as(app, "late")
    assert all(e.get("seq") != bad["seq"] for e in late.snapshot["recent"])
    await host.send(t="mod", action="delete", seq=10**9)
    await error_of(host, ErrorCode.MOD_TARGET)
    await honest_exchange(host, viewer, late)


async def test_block_dms(app: App) -> None:
    viewer = await join_as(app, "viewer")
    creep = await join_as(app, "creep", ip=ATTACKER_IP)
    await viewer.send(t="block", uid="creep", cid="b")
    ack = await viewer.recv_until(lambda f: f["t"] == "block_ack")
    assert ack == {"t": "block_ack", "uid": "creep", "blocked": True, "cid": "b"}
    await creep.send(t="dm", to="viewer", text="hey", cid=5)
    assert (await error_of(creep, ErrorCode.DM_BLOCKED))["ref"] == 5
    await viewer.send(t="unblock", uid="creep")
    await viewer.recv_until(lambda f: f["t"] == "block_ack" and not f["blocked"])
    await creep.send(t="dm", to="viewer", text="sorry")
    dm = await viewer.recv_until(lambda f: f["t"] == "dm")
    assert dm["text"] == "sorry"
    await honest_exchange(viewer)


# -- tokens and transport ---------------------------------------------------------------------------------

OLD_SECRET = "an-old-secret-that-is-long-enough-0000"


@tune(secret_old=OLD_SECRET)
async def test_key_rotation(app: App) -> None:
    from server.abuse.tokens import key_id

    viewer = await join_as(app, "viewer")
    old = auth.mint(OLD_SECRET, room="r1", user="oldie", kid=key_id(OLD_SECRET))
    oldie = await join_as(app, "oldie", tok=old)
    await honest_exchange(oldie, viewer)
    forged = auth.mint("some-other-secret-nobody-configured-00", room="r1", user="x", kid="deadbeef")
    error, code = await refused(app, "x", tok=forged)
    assert error["code"] == code == ErrorCode.TOKEN_INVALID


@tune(join_nonce=True)
async def test_join_nonce_refuses_replay(app: App) -> None:
    viewer = await join_as(app, "viewer")
    once = token(user="mallory")
    await join_as(app, "mallory", ip=ATTACKER_IP, tok=once)
    error, code = await refused(app, "mallory", tok=once)
    assert error["code"] == code == ErrorCode.TOKEN_REPLAYED
    await honest_exchange(viewer)


@tune(allowed_origins="https://partner.example")
async def test_origin_allow_list(app: App) -> None:
    viewer = await join_as(app, "viewer")
    url = f"ws://127.0.0.1:{app.port}/ws?token={token(user='x')}"
    with pytest.raises(InvalidStatus) as info:
        await connect(url, origin="https://evil.example")
    assert info.value.response.status_code == 403
    for origin in ("https://partner.example", f"http://127.0.0.1:{app.port}"):
        ws = await connect(url, origin=origin)
        assert msgpack.unpackb(await ws.recv())["t"] == "snapshot"
        await ws.close()
    await honest_exchange(viewer)
