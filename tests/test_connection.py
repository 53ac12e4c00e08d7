"""The connection state machine without a socket: events in, outputs out (server.edge.connection).

A real Guard (real buckets, real keyring) over a MemoryBroker; the peer is a plain object
that records what the state machine and the guard ask of it.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from server.abuse.guard import Guard
from server.abuse.moderation import Moderation
from server.broker.memory import MemoryBroker
from server.config import Config
from server.delivery.fanout import RoomFanout
from server.delivery.hub import Hub
from server.edge.client import WsWriter
from server.edge.connection import (
    Admit,
    AwaitJoin,
    Close,
    Connection,
    Dispatch,
    Enter,
    Hangup,
    Output,
    Pause,
    Phase,
    Refused,
    Route,
    Send,
)
from server.wire import auth
from server.wire.protocol import ErrorCode, ProtocolError
from tests.conftest import SECRET, token


class FakePeer:
    """What the guard and the state machine touch on a connection; records refusals it performs."""

    closing = False

    def __init__(self) -> None:
        self.remote_ip = "10.0.0.1"
        self.identity: auth.Identity | None = None
        self.room_id: str | None = None
        self.abuse: Any = None
        self.dropped = 0
        self.conn: Connection | None = None
        self.performed: list[Output] = []
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def buffered(self) -> int:
        return 0

    def reject(self, error: ProtocolError) -> None:  # what Client.reject does: perform conn.reject
        assert self.conn is not None
        self.performed.extend(self.conn.reject(error))

    def close(self, code: int, reason: str) -> None:
        self.performed.append(Close(code, reason))


def _config(**kw: Any) -> Config:
    return Config(port=0, http_port=0, secret=SECRET, join_timeout=2.0, **kw)


def _conn(**kw: Any) -> tuple[Connection, FakePeer]:
    config = _config(**kw)
    broker = MemoryBroker(node_id="n1")
    hub = Hub(config, broker, RoomFanout(config, WsWriter()))
    guard = Guard(config, broker.limits, Moderation(broker.limits, hub, None, config.tick_ms))
    peer = FakePeer()
    conn = Connection(peer, guard, config.join_timeout)  # type: ignore[arg-type]
    peer.conn = conn
    return conn, peer


def _frame(**fields: Any) -> bytes:
    return msgpack.packb(fields)


def _codes(outputs: list[Output]) -> list[int]:
    return [int(o.error.code) for o in outputs if isinstance(o, Refused)]


def _errors(outputs: list[Output]) -> list[dict[str, Any]]:
    return [msgpack.unpackb(o.frame) for o in outputs if isinstance(o, Send)]


async def _joined(conn: Connection, peer: FakePeer, user: str = "alice") -> None:
    signed = token(user=user)
    out = conn.open(f"/ws?token={signed}&room=r1")
    assert out == [Admit(signed, "r1")]
    admit = out[0]
    who = await conn.guard.admit(peer, admit.token, admit.room)  # type: ignore[arg-type]
    assert conn.admitted(who) == [Enter(None)]
    assert conn.entered() == []
    assert conn.phase is Phase.JOINED


async def test_token_in_url_goes_straight_to_admission() -> None:
    conn, peer = _conn()
    out = conn.open("/ws?token=abc&room=r1")
    assert out == [Admit("abc", "r1")]
    assert conn.phase is Phase.ADMITTING
    assert peer.abuse is not None  # the guard's per-connection state exists from the start


async def test_bad_room_in_url_is_refused_and_closed() -> None:
    conn, _ = _conn()
    out = conn.open("/ws?token=abc&room=bad%20room")
    assert _codes(out) == [int(ErrorCode.BAD_FIELD)]
    assert out[-1] == Close(int(ErrorCode.BAD_FIELD), "'room' is not a valid room id")
    assert conn.phase is Phase.CLOSED
    assert conn.receive(_frame(t="ping", ts=1)) == []  # nothing is handled after that


async def test_without_token_the_first_frame_must_be_a_join() -> None:
    conn, _ = _conn()
    assert conn.open("/ws") == [AwaitJoin(2.0)]
    out = conn.receive(_frame(t="ping", ts=1))
    assert _codes(out) == [int(ErrorCode.AUTH_REQUIRED)]
    assert isinstance(out[-1], Close) and out[-1].code == ErrorCode.AUTH_REQUIRED
    assert conn.phase is Phase.CLOSED


async def test_join_timeout_closes_with_4104() -> None:
    conn, _ = _conn()
    conn.open("/ws")
    out = conn.timed_out()
    assert _errors(out)[0]["code"] == ErrorCode.AUTH_TIMEOUT
    assert out[-1] == Close(int(ErrorCode.AUTH_TIMEOUT), "no join frame in time")


async def test_join_frame_with_resume_carries_it_to_enter() -> None:
    conn, peer = _conn()
    conn.open("/ws?room=r1")  # the room from the URL when the join frame names none
    out = conn.receive(_frame(t="join", v=1, token="tok", resume={"epoch": "e1", "seq": 7}))
    assert out == [Admit("tok", "r1")]
    who = auth.verify(SECRET, token(user="bob"), "r1")
    assert conn.admitted(who) == [Enter(("e1", 7))]
    assert peer.identity is who and peer.room_id == "r1"


async def test_refused_admission_sends_the_error_then_closes() -> None:
    conn, peer = _conn()
    conn.open("/ws?token=forged&room=r1")
    with pytest.raises(ProtocolError) as caught:
        await conn.guard.admit(peer, "forged", "r1")  # type: ignore[arg-type]
    out = conn.refused(caught.value)
    assert _errors(out)[0]["code"] == ErrorCode.TOKEN_INVALID
    assert out[-1] == Close(int(ErrorCode.TOKEN_INVALID), caught.value.message)


async def test_joined_messages_are_routed_answered_or_refused() -> None:
    conn, peer = _conn(rate_limits="off")
    await _joined(conn, peer)
    danmaku = conn.receive(_frame(t="danmaku", text="hi", cid=1))
    assert len(danmaku) == 1 and isinstance(danmaku[0], Dispatch) and danmaku[0].route is Route.DANMAKU
    like = conn.receive(_frame(t="like", count=3))
    assert isinstance(like[0], Dispatch) and like[0].route is Route.LIKE
    pong = conn.receive(_frame(t="ping", ts=42))
    assert isinstance(pong[0], Send)
    answer = msgpack.unpackb(pong[0].frame)
    assert answer["t"] == "pong" and answer["ts"] == 42
    again = conn.receive(_frame(t="join", v=1, token="x"))
    assert _codes(again) == [int(ErrorCode.ALREADY_JOINED)]
    assert not any(isinstance(o, Close) for o in again)  # not fatal: the connection stays
    assert conn.receive(_frame(t="leave")) == [Hangup()]
    assert conn.phase is Phase.CLOSED


async def test_rate_limited_flooder_is_paused() -> None:
    conn, peer = _conn(rate_limits="danmaku.conn=1/1")
    await _joined(conn, peer)
    assert isinstance(conn.receive(_frame(t="danmaku", text="one"))[0], Dispatch)
    out = conn.receive(_frame(t="danmaku", text="two"))
    assert _codes(out) == [int(ErrorCode.RATE_LIMITED)]
    pause = [o for o in out if isinstance(o, Pause)]
    assert len(pause) == 1 and 0 < pause[0].seconds <= 1.0


async def test_a_handler_refusal_and_a_bug_each_cost_one_message() -> None:
    conn, peer = _conn(rate_limits="off")
    await _joined(conn, peer)
    out = conn.failed(ProtocolError(ErrorCode.DM_BLOCKED, "blocked", "c1"))
    assert _errors(out) == [{"t": "error", "code": 4405, "msg": "blocked", "ref": "c1"}]
    assert _codes(conn.crashed()) == [int(ErrorCode.INTERNAL)]
    assert conn.phase is Phase.JOINED


async def test_strikes_close_a_connection_that_keeps_being_refused() -> None:
    conn, peer = _conn(rate_limits="off", abuse_strikes=3)
    await _joined(conn, peer)
    sent_errors = 0
    for _ in range(10):
        sent_errors += len(_errors(conn.receive(b"\xc1not msgpack")))
        if peer.performed:
            break
    closes = [o for o in peer.performed if isinstance(o, Close)]
    assert closes == [Close(int(ErrorCode.ABUSIVE), "too many rejected messages")]
    assert sent_errors == 3  # the strikes' worth of error frames, then the close instead
    assert conn.phase is Phase.CLOSED


async def test_tests_run_on_uvloop() -> None:
    """Production runs on uvloop (server.cli): so do the tests (tests/conftest.py)."""
    import asyncio

    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
