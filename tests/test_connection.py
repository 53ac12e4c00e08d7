"""The connection state machine without a socket: events in, outputs out (server.edge.connection).

No Guard, Hub or Broker: the checks are a plain fake answering with decisions as data
(`server.abuse.decisions`), the handlers a table of recording functions, the peer a plain
object. What the real guard decides is tested against the guard itself (tests/test_abuse*.py).
"""

from __future__ import annotations

from typing import Any

import msgpack

from server.abuse.decisions import Shadowed, Strike
from server.config import Config
from server.edge.connection import (
    _TYPE_NAMES,
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
    Send,
    SendLater,
    handler_table,
)
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode, ProtocolError

WHO = auth.Identity(uid="alice", name="Alice", role="viewer", room="r1")


class FakePeer:
    """What the state machine touches on a connection."""

    def __init__(self) -> None:
        self.remote_ip = "10.0.0.1"
        self.identity: auth.Identity | None = None
        self.room_id: str | None = None
        self.abuse: Any = None


class FakeChecks:
    """The guard's answers, scripted: each check passes unless told otherwise; calls recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.connect_error: ProtocolError | None = None
        self.frame_error: ProtocolError | None = None
        self.verdict: Any = None  # what `check` answers instead of the message (a Shadowed)
        self.strikes: int | None = None  # refusals left before Strike.OUT; None: no strikes
        self.quiet = False  # the client does not read its errors

    def connect(self, peer: Any) -> None:
        self.calls.append(f"connect {peer.remote_ip}")
        if self.connect_error is not None:
            raise self.connect_error

    def joined(self, peer: Any) -> None:
        self.calls.append("joined")

    def frame(self, peer: Any) -> None:
        if self.frame_error is not None:
            raise self.frame_error

    def check(self, peer: Any, message: Any) -> Any:
        return message if self.verdict is None else self.verdict

    def penalty(self, error: ProtocolError) -> float:
        return error.retry_after or 0.0 if error.code == ErrorCode.RATE_LIMITED else 0.0

    def on_reject(self, peer: Any, error: ProtocolError) -> Strike:
        if error.fatal:
            return Strike.TELL
        if self.strikes is not None:
            self.strikes -= 1
            if self.strikes == 0:
                self.strikes = None
                return Strike.OUT
        return Strike.QUIET if self.quiet else Strike.TELL


handled: list[tuple[str, Any]] = []


async def _danmaku(peer: Any, message: Any) -> None:
    handled.append(("danmaku", message))


def _like(peer: Any, message: Any) -> None:
    handled.append(("like", message))


async def _media(peer: Any, message: Any) -> None:
    handled.append(("media", message))


HANDLERS = handler_table(
    {protocol.Danmaku: _danmaku, protocol.Like: _like, **dict.fromkeys(protocol.MEDIA_MESSAGES, _media)}
)


def _conn(dev_tokens: Any = None) -> tuple[Connection, FakePeer, FakeChecks]:
    peer, checks = FakePeer(), FakeChecks()
    return Connection(peer, checks, HANDLERS, 2.0, dev_tokens), peer, checks  # type: ignore[arg-type]


def _frame(**fields: Any) -> bytes:
    return msgpack.packb(fields)


def _codes(outputs: list[Output]) -> list[int]:
    return [int(o.error.code) for o in outputs if isinstance(o, Refused)]


def _errors(outputs: list[Output]) -> list[dict[str, Any]]:
    return [msgpack.unpackb(o.frame) for o in outputs if isinstance(o, Send)]


def _joined(conn: Connection) -> None:
    assert conn.open("/ws?token=tok&room=r1") == [Admit("tok", "r1")]
    assert conn.admitted(WHO) == [Enter(None)]
    assert conn.entered() == []
    assert conn.phase is Phase.JOINED


def test_token_in_url_goes_straight_to_admission() -> None:
    conn, _, checks = _conn()
    assert conn.open("/ws?token=abc&room=r1") == [Admit("abc", "r1")]
    assert conn.phase is Phase.ADMITTING
    assert checks.calls == ["connect 10.0.0.1"]  # the address cap first, from the peer's address


def test_a_refused_connect_is_answered_and_closed() -> None:
    conn, _, checks = _conn()
    checks.connect_error = ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, "too many")
    out = conn.open("/ws?token=abc&room=r1")
    assert _codes(out) == [int(ErrorCode.TOO_MANY_CONNECTIONS)]
    assert out[-1] == Close(int(ErrorCode.TOO_MANY_CONNECTIONS), "too many")
    assert conn.phase is Phase.CLOSED


def test_bad_room_in_url_is_refused_and_closed() -> None:
    conn, _, _ = _conn()
    out = conn.open("/ws?token=abc&room=bad%20room")
    assert _codes(out) == [int(ErrorCode.BAD_FIELD)]
    assert out[-1] == Close(int(ErrorCode.BAD_FIELD), "'room' is not a valid room id")
    assert conn.phase is Phase.CLOSED
    assert conn.receive(_frame(t="ping", ts=1)) == []  # nothing is handled after that


def test_without_token_the_first_frame_must_be_a_join() -> None:
    conn, _, _ = _conn()
    assert conn.open("/ws") == [AwaitJoin(2.0)]
    out = conn.receive(_frame(t="ping", ts=1))
    assert _codes(out) == [int(ErrorCode.AUTH_REQUIRED)]
    assert isinstance(out[-1], Close) and out[-1].code == ErrorCode.AUTH_REQUIRED
    assert conn.phase is Phase.CLOSED


def test_join_timeout_closes_with_4104() -> None:
    conn, _, _ = _conn()
    conn.open("/ws")
    out = conn.timed_out()
    assert _errors(out)[0]["code"] == ErrorCode.AUTH_TIMEOUT
    assert out[-1] == Close(int(ErrorCode.AUTH_TIMEOUT), "no join frame in time")


def test_join_frame_with_resume_carries_it_to_enter() -> None:
    conn, peer, _ = _conn()
    conn.open("/ws?room=r1")  # the room from the URL when the join frame names none
    out = conn.receive(_frame(t="join", v=1, token="tok", resume={"epoch": "e1", "seq": 7}))
    assert out == [Admit("tok", "r1")]
    assert conn.admitted(WHO) == [Enter(("e1", 7))]
    assert peer.identity is WHO and peer.room_id == "r1"


def test_refused_admission_sends_the_error_then_closes() -> None:
    conn, _, _ = _conn()
    conn.open("/ws?token=forged&room=r1")
    error = ProtocolError(ErrorCode.TOKEN_INVALID, "bad signature")
    out = conn.refused(error)
    assert _errors(out)[0]["code"] == ErrorCode.TOKEN_INVALID
    assert out[-1] == Close(int(ErrorCode.TOKEN_INVALID), "bad signature")


def test_entering_with_media_dispatches_the_subscribe_after_the_snapshot() -> None:
    conn, _, checks = _conn()
    conn.open("/ws?token=tok&room=r1&subscribe=m0")
    conn.admitted(WHO)
    assert conn.entered() == [Dispatch(HANDLERS[protocol.Subscribe], protocol.Subscribe(cid="m0"))]
    assert checks.calls[-1] == "joined"


def test_joined_messages_go_to_their_handler_answered_or_refused() -> None:
    conn, _, _ = _conn()
    _joined(conn)
    (danmaku,) = conn.receive(_frame(t="danmaku", text="hi", cid=1))
    assert isinstance(danmaku, Dispatch) and danmaku.handler is HANDLERS[protocol.Danmaku]
    assert danmaku.handler.awaits and danmaku.message.text == "hi"
    (like,) = conn.receive(_frame(t="like", count=3))
    assert isinstance(like, Dispatch) and like.handler is HANDLERS[protocol.Like] and not like.handler.awaits
    (pong,) = conn.receive(_frame(t="ping", ts=42))
    assert isinstance(pong, Send)
    answer = msgpack.unpackb(pong.frame)
    assert answer["t"] == "pong" and answer["ts"] == 42
    again = conn.receive(_frame(t="join", v=1, token="x"))
    assert _codes(again) == [int(ErrorCode.ALREADY_JOINED)]
    assert not any(isinstance(o, Close) for o in again)  # not fatal: the connection stays
    unrouted = conn.receive(_frame(t="viewers"))  # a type with no handler in this table
    assert _codes(unrouted) and not any(isinstance(o, Dispatch) for o in unrouted)
    assert conn.receive(_frame(t="leave")) == [Hangup()]
    assert conn.phase is Phase.CLOSED


def test_a_shadowed_message_goes_no_further_and_only_its_sender_is_answered() -> None:
    conn, _, checks = _conn()
    _joined(conn)
    checks.verdict = Shadowed(b"echo", 0.05)
    assert conn.receive(_frame(t="danmaku", text="spam")) == [SendLater(b"echo", 0.05)]
    checks.verdict = Shadowed(b"ack")
    assert conn.receive(_frame(t="dm", to="bob", text="spam")) == [Send(b"ack")]


def test_rate_limited_flooder_is_paused() -> None:
    conn, _, checks = _conn()
    _joined(conn)
    checks.frame_error = ProtocolError(ErrorCode.RATE_LIMITED, "slow down", None, 0.5)
    out = conn.receive(_frame(t="danmaku", text="two"))
    assert _codes(out) == [int(ErrorCode.RATE_LIMITED)]
    assert [o for o in out if isinstance(o, Pause)] == [Pause(0.5)]


def test_a_handler_refusal_and_a_bug_each_cost_one_message() -> None:
    conn, _, _ = _conn()
    _joined(conn)
    out = conn.failed(ProtocolError(ErrorCode.DM_BLOCKED, "blocked", "c1"))
    assert _errors(out) == [{"t": "error", "code": 4405, "msg": "blocked", "ref": "c1"}]
    assert _codes(conn.crashed()) == [int(ErrorCode.INTERNAL)]
    assert conn.phase is Phase.JOINED


def test_a_client_that_does_not_read_its_errors_gets_no_more() -> None:
    conn, _, checks = _conn()
    _joined(conn)
    checks.quiet = True
    out = conn.receive(b"\xc1not msgpack")
    assert _codes(out) == [int(ErrorCode.BAD_FRAME)] and _errors(out) == []


def test_strikes_close_a_connection_that_keeps_being_refused() -> None:
    conn, _, checks = _conn()
    _joined(conn)
    checks.strikes = 3
    outs = [conn.receive(b"\xc1not msgpack") for _ in range(3)]
    assert [len(_errors(out)) for out in outs[:2]] == [1, 1]  # told, while strikes are left
    last = outs[2]
    assert _codes(last) == [int(ErrorCode.BAD_FRAME), int(ErrorCode.ABUSIVE)]
    assert [e["code"] for e in _errors(last)] == [int(ErrorCode.ABUSIVE)]  # 4307 instead of the error
    assert last[-1] == Close(int(ErrorCode.ABUSIVE), "too many rejected messages")
    assert conn.phase is Phase.CLOSED
    assert conn.receive(_frame(t="ping", ts=1)) == []


def test_the_app_routes_every_message_a_joined_connection_may_send(config: Config) -> None:
    """One table, built in app.py: every counted message type but the connection's own."""
    from server.app import App

    table = App(config).handler_table()
    own = {protocol.Join, protocol.Leave, protocol.Ping}
    assert set(table) == set(_TYPE_NAMES) - own


async def test_tests_run_on_uvloop() -> None:
    """Production runs on uvloop (server.cli): so do the tests (tests/conftest.py)."""
    import asyncio

    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
