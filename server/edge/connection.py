"""One connection's state machine with no I/O: join, resume, strikes and dispatch.

Like the sans-I/O core of `websockets`, it is driven by events (`open`, `receive`,
`timed_out`, `admitted`, `refused`, `entered`, `failed`, `crashed`, `reject`) and answers
each with a list of outputs: frames to send (now or later), a close, a pause in reading, or a
request for the I/O layer to carry out (read the join frame, admit a token, enter the room,
hand a message to its handler) and report back. The checks it asks (`Checks`, the guard in
production) answer with decisions as data (`server.abuse.decisions`), never by writing to the
peer; the handlers come as one table keyed by message type, built in `app.py`.
`server.edge.client` only feeds it bytes and performs what it returns, so every rule here is
tested without a socket and without a Guard, Hub or Broker (tests/test_connection.py).
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from server import metrics
from server.abuse.decisions import Shadowed, Strike
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.delivery.peer import Peer
    from server.wire.auth import Identity

log = logging.getLogger("liveroom.connection")


class Phase(enum.Enum):
    OPENING = "opening"  # before `open`
    AWAITING_JOIN = "awaiting_join"  # no token in the URL: the first frame must be a join
    ADMITTING = "admitting"  # the guard checks the token, the node writes the snapshot
    JOINED = "joined"
    CLOSED = "closed"  # refused, left, or closed for abuse: nothing more is handled


@dataclass(frozen=True, slots=True)
class Handler:
    """Where a joined connection's message of one type goes: `call(peer, message)`."""

    call: Callable[[Any, Any], Awaitable[None] | None]
    awaits: bool  # a coroutine function: the client awaits it before reading on


Handlers = Mapping[type, Handler]


def handler_table(calls: Mapping[type, Callable[[Any, Any], Awaitable[None] | None]]) -> dict[type, Handler]:
    """The one routing table (built in app.py): message type -> its handler."""
    return {kind: Handler(call, inspect.iscoroutinefunction(call)) for kind, call in calls.items()}


class Checks(Protocol):
    """What the connection asks of the guard; each answer is data (or a ProtocolError)."""

    def connect(self, peer: Peer) -> None:
        """The per-address connection cap, from `peer.remote_ip`."""

    def joined(self, peer: Peer) -> None:
        """The join is no longer in flight."""

    def frame(self, peer: Peer) -> None:
        """The rate of frames, before decoding."""

    def check(self, peer: Peer, message: protocol.ClientMessage) -> protocol.ClientMessage | Shadowed:
        """Rate, mute and content checks; the message (maybe cleaned) or `Shadowed`."""

    def penalty(self, error: ProtocolError) -> float:
        """Seconds to stop reading after this refusal."""

    def on_reject(self, peer: Peer, error: ProtocolError) -> Strike:
        """What this refusal costs the connection."""


# -- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    frame: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendLater:
    """Send `frame` after `delay` seconds (a shadow-dropped danmaku's echo at the next tick)."""

    frame: bytes
    delay: float


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal happened (for the connection's log line and metrics label)."""

    error: ProtocolError


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop reading for this long: the flood queues up and TCP pushes back on the sender."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Hangup:
    """The client said goodbye: close normally and stop reading."""


@dataclass(frozen=True, slots=True)
class AwaitJoin:
    """Read the first frame within `timeout` seconds, then report `receive` or `join_timeout`."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Admit:
    """Verify the token (Guard.admit), then report `admitted` or `refused`."""

    token: str | None
    room: str | None


@dataclass(frozen=True, slots=True)
class Enter:
    """Join the room (Node.join: snapshot or missed events first), then report `entered`."""

    resume: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Hand the message to its handler; report `failed` if it raises a ProtocolError."""

    handler: Handler
    message: protocol.ClientMessage


Output = Send | SendLater | Close | Refused | Pause | Hangup | AwaitJoin | Admit | Enter | Dispatch

_TYPE_NAMES: dict[type, str] = {
    protocol.Join: "join",
    protocol.Leave: "leave",
    protocol.Danmaku: "danmaku",
    protocol.Like: "like",
    protocol.DirectMessage: "dm",
    protocol.DmSeen: "dm_seen",
    protocol.Ping: "ping",
    protocol.Stats: "stats",
    protocol.Mod: "mod",
    protocol.Block: "block",
    protocol.SlowMode: "slow_mode",
    protocol.Viewers: "viewers",
    protocol.Gift: "gift",
    protocol.Follow: "follow",
    protocol.Schedule: "schedule",
    protocol.Reserve: "reserve",
    protocol.Link: "link",
    **{cls: cls.__name__.lower() for cls in protocol.MEDIA_MESSAGES},
    protocol.Reply: "reply",
    protocol.Question: "question",
    protocol.Pin: "pin",
    protocol.Unpin: "unpin",
    protocol.ProductEdit: "product",
}
# label lookups cost a lock and a dict per call: bind each type's counter once
_COUNTED = {cls: metrics.messages_in.labels(type=name) for cls, name in _TYPE_NAMES.items()}


# Mints a viewer token (room, user, name) for a dev join; None when dev tokens are off.
DevTokens = Callable[[str, str, str], str]


class Connection:
    """The rules of one client connection; `peer` carries its identity and abuse state."""

    __slots__ = (
        "_resume",
        "_room_hint",
        "_subscribe",
        "checks",
        "dev_tokens",
        "handlers",
        "join_timeout",
        "peer",
        "phase",
    )

    def __init__(
        self,
        peer: Peer,
        checks: Checks,
        handlers: Handlers,
        join_timeout: float,
        dev_tokens: DevTokens | None = None,
    ) -> None:
        self.peer = peer
        self.checks = checks
        self.handlers = handlers
        self.join_timeout = join_timeout
        self.dev_tokens = dev_tokens
        self.phase = Phase.OPENING
        self._resume: tuple[str, int] | None = None
        self._room_hint: str | None = None  # ?room= when the join frame names none
        # media with the join (docs/PROTOCOL.md): the subscribe's cid, True without one
        self._subscribe: str | int | bool | None = None

    # -- joining ---------------------------------------------------------------------------

    def open(self, path: str) -> list[Output]:
        """The WebSocket is open; `path` is its request target (token and room may be in it)."""
        query = parse_qs(urlsplit(path).query)
        token = query.get("token", [None])[0]
        room = query.get("room", [None])[0]
        try:
            self.checks.connect(self.peer)  # per-IP connection cap, before anything else
            if token is None and "dev_user" not in query:
                self.phase = Phase.AWAITING_JOIN
                self._room_hint = room
                return [AwaitJoin(self.join_timeout)]
            if room is not None and not protocol.valid_id(room):
                raise ProtocolError(ErrorCode.BAD_FIELD, "'room' is not a valid room id")
            self._subscribe = protocol.join_subscribe(query.get("subscribe", [None])[0])
            if token is None:  # the demo page's first join: no token round trip before it
                token = self._dev_token(query, room)
        except ProtocolError as error:
            return self.refused(error)
        self.phase = Phase.ADMITTING
        return [Admit(token, room)]

    def _dev_token(self, query: dict[str, list[str]], room: str | None) -> str:
        """`/ws?room=R&dev_user=U[&name=N]`: in dev mode, a viewer joins without fetching a token."""
        if self.dev_tokens is None:
            raise ProtocolError(ErrorCode.AUTH_REQUIRED, "dev tokens are disabled: join with a token")
        user = query["dev_user"][0]
        if room is None or not protocol.valid_id(user):
            raise ProtocolError(
                ErrorCode.BAD_FIELD, "dev join needs room and dev_user ids ([A-Za-z0-9_.:-]{1,64})"
            )
        name = query.get("name", [user])[0][: protocol.MAX_ID_LEN] or user
        return self.dev_tokens(room, user, name)

    def timed_out(self) -> list[Output]:
        """No join frame within the timeout of `AwaitJoin`."""
        return self.refused(ProtocolError(ErrorCode.AUTH_TIMEOUT, "no join frame in time"))

    def refused(self, error: ProtocolError) -> list[Output]:
        """The join failed: no room to stay in without one, so close whatever the code."""
        out = self.reject(error)
        self.phase = Phase.CLOSED
        out.append(Close(int(error.code), error.message))
        return out

    def admitted(self, who: Identity) -> list[Output]:
        self.peer.identity = who
        self.peer.room_id = who.room
        return [Enter(self._resume)]

    def entered(self) -> list[Output]:
        """The snapshot is written and the connection is a member of its room."""
        self.phase = Phase.JOINED
        self.checks.joined(self.peer)
        metrics.joins.inc()
        if self._subscribe is None:
            return []
        cid = None if self._subscribe is True else self._subscribe
        # the offer follows the snapshot
        return [Dispatch(self.handlers[protocol.Subscribe], protocol.Subscribe(cid=cid))]

    def _first_frame(self, data: bytes | str) -> list[Output]:
        try:
            message = protocol.parse_client_message(data)
            if not isinstance(message, protocol.Join):
                raise ProtocolError(ErrorCode.AUTH_REQUIRED, "the first frame must be a join")
        except ProtocolError as error:
            return self.refused(error)
        if message.resume_epoch is not None and message.resume_seq is not None:
            self._resume = (message.resume_epoch, message.resume_seq)
        self._subscribe = message.subscribe
        self.phase = Phase.ADMITTING
        return [Admit(message.token, message.room or self._room_hint)]

    # -- joined ----------------------------------------------------------------------------

    def receive(self, data: bytes | str) -> list[Output]:
        """One frame from the client."""
        phase = self.phase
        if phase is Phase.JOINED:
            return self._message(data)
        if phase is Phase.AWAITING_JOIN:
            return self._first_frame(data)
        return []  # closed, or a frame racing the admission: nothing to do with it

    def _message(self, data: bytes | str) -> list[Output]:
        checks = self.checks
        try:
            checks.frame(self.peer)  # rate of frames, before decoding
            message = checks.check(self.peer, protocol.parse_client_message(data))
            kind = type(message)
            if kind is Shadowed:  # goes no further: only the sender is answered
                frame, delay = message.frame, message.delay  # type: ignore[union-attr]
                return [SendLater(frame, delay) if delay else Send(frame)]
            _COUNTED[kind].inc()
            handler = self.handlers.get(kind)
            if handler is not None:
                return [Dispatch(handler, message)]  # type: ignore[arg-type]
            if kind is protocol.Ping:
                return [Send(protocol.pong_frame(message.ts))]  # type: ignore[union-attr]
            if kind is protocol.Leave:
                self.phase = Phase.CLOSED
                return [Hangup()]
            raise ProtocolError(ErrorCode.ALREADY_JOINED, "already joined; open a new connection")
        except ProtocolError as error:
            return self.failed(error)

    def failed(self, error: ProtocolError) -> list[Output]:
        """A message was refused (by the guard, the decoder or its handler)."""
        out = self.reject(error)
        if pause := self.checks.penalty(error):  # stop reading a flooder: TCP pushes back
            out.append(Pause(pause))
        return out

    def crashed(self) -> list[Output]:
        """A handler hit a bug: it costs this message, never the connection or the room."""
        return self.reject(ProtocolError(ErrorCode.INTERNAL, "internal error"))

    # -- refusals --------------------------------------------------------------------------

    def reject(self, error: ProtocolError) -> list[Output]:
        """The error frame (unless the client stopped reading them) and, if fatal, the close.

        A connection that keeps being refused uses up its strikes and is refused once more,
        with 4307 (fatal: closed) instead of this error's frame; the checks decide.
        """
        metrics.rejections.labels(reason=error.code.name.lower()).inc()
        out: list[Output] = [Refused(error)]
        strike = self.checks.on_reject(self.peer, error)
        if strike is Strike.TELL:
            out.append(Send(protocol.error_frame(error.code, error.message, error.ref, error.retry_after)))
        elif strike is Strike.OUT:
            out.extend(self.reject(ProtocolError(ErrorCode.ABUSIVE, "too many rejected messages")))
        if error.fatal:
            self.phase = Phase.CLOSED
            out.append(Close(int(error.code), error.message))
        return out
