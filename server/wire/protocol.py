"""Wire protocol: msgpack frames, validation and error codes, with no I/O.

Everything that crosses the WebSocket is defined here so that the transport
(`server.edge.client`) only moves bytes and the room logic only sees validated
values. Documented field by field in docs/PROTOCOL.md; keep the two in step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

# Limits applied while *decoding*, before any field is looked at, so that a
# hostile frame cannot make the unpacker allocate much (see docs/PROTOCOL.md).
MAX_STR_LEN = 4096
MAX_SDP_LEN = 32 * 1024  # the one field allowed past MAX_STR_LEN: a top-level "sdp" string
MAX_BIN_LEN = 64 * 1024  # SDP offers travel as str, binary stays small
MAX_ARRAY_LEN = 64
MAX_MAP_LEN = 32
MAX_DEPTH = 4

MAX_ID_LEN = 64
MAX_CID_LEN = 64
MAX_LIKE_COUNT = 100
MAX_SLOW_MODE = 3600  # seconds between a viewer's danmaku at most
MAX_VIEWER_LIST = 500  # users in a `viewers` answer
MAX_GIFT_COUNT = 99  # gifts of one kind in one `gift` message
MAX_TITLE_LEN = 100  # a scheduled live's title
MAX_SCHEDULE_AHEAD_MS = 30 * 86400 * 1000  # a live is scheduled at most 30 days ahead
PK_SECONDS = (30, 1800)  # a PK round's duration bounds
PK_PENALTY_SECONDS = (0, 600)  # the penalty after a round's result (0: none)
MAX_FIRST_FRAME_MS = 600_000  # a first frame later than 10 minutes is not a measurement
SYSTEM_UID = "sys"


class ErrorCode(IntEnum):
    """Stable numeric error codes; also used as WebSocket close codes."""

    BAD_FRAME = 4000
    UNKNOWN_TYPE = 4001
    BAD_FIELD = 4002
    NOT_JOINED = 4003
    ALREADY_JOINED = 4004
    UNSUPPORTED_VERSION = 4005
    # HTTP doors (WHIP/WHEP, stats, admin, the WS port's GETs): malformed requests
    NOT_FOUND = 4006
    METHOD_NOT_ALLOWED = 4007
    BODY_TOO_LARGE = 4008
    BAD_CONTENT_TYPE = 4009
    BAD_REQUEST = 4010
    BODY_TIMEOUT = 4011  # HTTP doors: the body did not arrive within body_timeout (408, closed)
    AUTH_REQUIRED = 4100
    TOKEN_INVALID = 4101
    TOKEN_EXPIRED = 4102
    WRONG_ROOM = 4103
    AUTH_TIMEOUT = 4104
    FORBIDDEN = 4200
    TEXT_EMPTY = 4201
    TEXT_TOO_LONG = 4202
    BAD_RECIPIENT = 4203
    ORIGIN_FORBIDDEN = 4204
    HOST_FORBIDDEN = 4205
    RATE_LIMITED = 4300
    # abuse resistance (server.abuse): 43xx rate/abuse, 44xx moderation
    TOO_MANY_CONNECTIONS = 4301
    NODE_BUSY = 4302
    CONTENT_REJECTED = 4303
    CONTACT_SPAM = 4304
    REPEATED = 4305
    TOKEN_REPLAYED = 4306
    ABUSIVE = 4307
    JOIN_THROTTLED = 4308
    SLOW_MODE = 4309  # the room's slow mode: one danmaku per `slow_mode` seconds per viewer
    SLOW_CONSUMER = 4400
    MUTED = 4401
    KICKED = 4402
    BANNED = 4403
    MOD_TARGET = 4404
    DM_BLOCKED = 4405
    PIN_TARGET = 4406  # unpin of a pin the room does not have
    ROOM_CLOSED = 4410  # close code only: an operator closed the room (admin API)
    SHUTTING_DOWN = 4500
    BROKER_UNAVAILABLE = 4501  # the shared store (Redis) is unreachable: retry after `retry_after` s
    DM_STORE_FULL = 4502  # the sender's DM quota or the in-memory DM store is full: retry later
    # media signaling (publish / subscribe / WHIP / WHEP); none closes the connection
    MEDIA_UNAVAILABLE = 4600
    MEDIA_BAD_SDP = 4601
    MEDIA_UNSUPPORTED = 4602
    MEDIA_TOO_MANY_TRACKS = 4603
    MEDIA_FORBIDDEN = 4604
    MEDIA_ALREADY_PUBLISHING = 4605
    MEDIA_BAD_STATE = 4606
    MEDIA_NO_MEDIA = 4607
    MEDIA_CODEC_MISMATCH = 4608
    MEDIA_VIEWER_CODEC = 4609
    MEDIA_TOO_MANY_PUBLISHERS = 4610
    MEDIA_TOO_MANY_VIEWERS = 4611
    MEDIA_TOO_MANY_SESSIONS = 4612
    MEDIA_WRONG_NODE = 4620
    # gifts, follows, cross-room links (server.node.gifts, server.node.fans, server.node.pk)
    GIFT_UNKNOWN = 4700  # no such gift in the catalogue
    GIFT_REFUSED = 4701  # the authorisation said no (callback refusal, or demo balance too low)
    GIFT_AUTH_UNAVAILABLE = 4702  # the authorisation callback did not answer in time: retry
    FOLLOW_TARGET = 4710  # follow yourself, reserve a live that is not scheduled
    LINK_TARGET = 4720  # link to this room, or to a room without a host
    LINK_BUSY = 4721  # a room in a link (or with an invitation pending) cannot take another
    LINK_STATE = 4722  # accept/decline without an invitation, end/pk without a link
    INTERNAL = 4999


# Close codes after which reconnecting with the same token cannot succeed: a client stops
# (client_demo/live.js NO_RETRY must match: tests/test_close_codes.py).
NO_RETRY_CODES = frozenset(
    {
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.AUTH_REQUIRED,
        ErrorCode.TOKEN_INVALID,
        ErrorCode.WRONG_ROOM,
        ErrorCode.ABUSIVE,
        ErrorCode.KICKED,
        ErrorCode.BANNED,
        ErrorCode.ROOM_CLOSED,
    }
)
# Close codes after which a client needs a new token before it reconnects (live.js FRESH_TOKEN).
FRESH_TOKEN_CODES = frozenset({ErrorCode.TOKEN_EXPIRED, ErrorCode.TOKEN_REPLAYED})

# Codes after which the server closes the connection with the same code.
FATAL_CODES = frozenset(
    {
        ErrorCode.AUTH_REQUIRED,
        ErrorCode.TOKEN_INVALID,
        ErrorCode.TOKEN_EXPIRED,
        ErrorCode.WRONG_ROOM,
        ErrorCode.AUTH_TIMEOUT,
        ErrorCode.SLOW_CONSUMER,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.NODE_BUSY,
        ErrorCode.TOKEN_REPLAYED,
        ErrorCode.ABUSIVE,
        ErrorCode.JOIN_THROTTLED,
        ErrorCode.KICKED,
        ErrorCode.BANNED,
    }
)


class ProtocolError(Exception):
    """A client mistake: carries the code and message sent back in an error frame."""

    def __init__(
        self, code: ErrorCode, message: str, ref: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code.name} ({int(code)}): {message}")
        self.code = code
        self.message = message
        self.ref = ref
        self.retry_after = retry_after  # seconds, sent as `retry_after` in the error frame

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES


# --- client -> server messages -------------------------------------------------


@dataclass(slots=True)
class Join:
    token: str | None
    room: str | None
    resume_epoch: str | None = None
    resume_seq: int | None = None
    # Subscribe to the room's media right after the snapshot (its cid; True: no cid), saving
    # the viewer a round trip before the server's offer (docs/PROTOCOL.md, "join").
    subscribe: str | int | bool | None = None


@dataclass(slots=True)
class Leave:
    pass


@dataclass(slots=True)
class Danmaku:
    text: str
    cid: str | int | None


@dataclass(slots=True)
class Like:
    count: int


@dataclass(slots=True)
class DirectMessage:
    to: str
    text: str
    cid: str | int | None


@dataclass(slots=True)
class DmSeen:
    """The client has every DM up to and including `id`: stop re-sending them on connect."""

    id: str


@dataclass(slots=True)
class Stats:
    """Client-measured playback figures for room analytics (first one per connection kept)."""

    first_frame_ms: int


@dataclass(slots=True)
class Ping:
    ts: int | float | None


@dataclass(slots=True)
class Publish:
    """Offer to publish (host or invited co-host): complete SDP, candidates included."""

    sdp: str
    cid: str | int | None


@dataclass(slots=True)
class Unpublish:
    cid: str | int | None


@dataclass(slots=True)
class Subscribe:
    """Ask to receive the room's media; the server sends the offer (now or when live)."""

    cid: str | int | None


@dataclass(slots=True)
class Unsubscribe:
    cid: str | int | None


@dataclass(slots=True)
class Answer:
    """The client's answer to a server `offer` (subscribe and renegotiation)."""

    sdp: str
    cid: str | int | None


@dataclass(slots=True)
class Invite:
    """A host invites a user in the room to co-stream (publish next to the host)."""

    uid: str
    cid: str | int | None


@dataclass(slots=True)
class SlowMode:
    """A host or moderator sets the room's slow mode: one danmaku per `seconds` per viewer (0: off)."""

    seconds: int
    cid: str | int | None


@dataclass(slots=True)
class Viewers:
    """A host or moderator asks who is in the room (this node's connections)."""

    cid: str | int | None


@dataclass(slots=True)
class Gift:
    """Send `count` of a catalogue gift to the room's host (server.node.gifts)."""

    gift: str
    count: int
    cid: str | int | None


@dataclass(slots=True)
class Follow:
    """Follow (or unfollow) a host by uid: told on the user channel when the host goes live."""

    host: str
    on: bool
    cid: str | int | None


@dataclass(slots=True)
class Schedule:
    """A host announces a live at `at` (ms since the epoch) with a title."""

    at: int
    title: str
    cid: str | int | None


@dataclass(slots=True)
class Reserve:
    """A viewer reserves a scheduled live of `host` (`id` from the `schedule` event)."""

    host: str
    id: str
    cid: str | int | None


LINK_ACTIONS = frozenset({"invite", "accept", "decline", "end", "pk"})


@dataclass(slots=True)
class Link:
    """Hosts of two rooms: invite / accept / decline / end a link, or start a PK round in it."""

    action: str
    room: str | None  # the other room (invite, accept, decline)
    seconds: int | None  # a PK round's duration (pk)
    cid: str | int | None
    penalty: int | None = None  # seconds of penalty after the round's result (pk; 0: none)


# Handled by the node's media gateway (server/media/gateway.py).
MEDIA_MESSAGES = (Publish, Unpublish, Subscribe, Unsubscribe, Answer, Invite)


@dataclass(slots=True)
class Mod:
    """A host or moderator acts on a user (uid) or on a danmaku (seq) in their room."""

    action: str
    uid: str | None
    seq: int | None
    duration: float | None  # seconds; None: the action's default
    reason: str
    cid: str | int | None


@dataclass(slots=True)
class Block:
    """Block (or unblock) DMs from a user."""

    uid: str
    blocked: bool
    cid: str | int | None


# -- the live-commerce assistant and the host's answers (server.node.answers) ---------------------

MAX_REPLY_LEN = 500  # characters of an answer
MAX_REPLY_TARGETS = 20  # question seqs (and askers) one reply answers
MAX_PINS = 3  # pins a room shows at once; a newer one pushes the oldest out
QA_SIZE = 200  # question and reply events a room keeps for its staff (snapshot `qa`)
MAX_PRODUCT_EDITS = 100  # products whose edits a room keeps (snapshot `products`), latest first kept
MAX_PRODUCT_ID_LEN = 64


@dataclass(slots=True)
class Reply:
    """An answer to one or more questions (danmaku seqs) from the assistant or the host."""

    text: str
    seqs: list[int]
    askers: list[str]  # uids being answered, for the "@a @b" mention and the question board
    pin: bool  # the host's "answer and pin" (the reply also becomes a pinned message)
    cid: str | int | None


@dataclass(slots=True)
class Question:
    """The assistant's reading of danmaku: these seqs ask about `key` (for the host's board)."""

    key: str
    label: str
    seqs: list[int]
    askers: list[str]
    cid: str | int | None
    names: list[str]  # names[i]: askers[i]'s display name as the tagger saw it (optional)


@dataclass(slots=True)
class Pin:
    """Pin a product card (`product` map) or a message (`text`) above every viewer's chat."""

    product: dict[str, Any] | None
    text: str | None
    cid: str | int | None


@dataclass(slots=True)
class Unpin:
    id: str
    cid: str | int | None


@dataclass(slots=True)
class ProductEdit:
    """The host changes a product's price or stock: the assistant and pinned cards follow."""

    id: str
    price: float | None
    stock: int | None
    cid: str | int | None


ANSWER_MESSAGES = (Reply, Question, Pin, Unpin, ProductEdit)


ClientMessage = (
    Join
    | Leave
    | Danmaku
    | Like
    | DirectMessage
    | DmSeen
    | Ping
    | Stats
    | Publish
    | Unpublish
    | Subscribe
    | Unsubscribe
    | Answer
    | Invite
    | Mod
    | Block
    | Reply
    | Question
    | Pin
    | Unpin
    | ProductEdit
    | SlowMode
    | Viewers
    | Gift
    | Follow
    | Schedule
    | Reserve
    | Link
)


def _depth_ok(obj: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


def _strings_ok(obj: Any) -> bool:
    """MAX_STR_LEN for every string (keys too) except the top-level "sdp" value."""
    if isinstance(obj, str):
        return len(obj) <= MAX_STR_LEN
    if isinstance(obj, dict):
        return all(_strings_ok(k) and _strings_ok(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_strings_ok(v) for v in obj)
    return True


def unpack(data: bytes | str) -> dict[str, Any]:
    """Decode one frame into a map, raising only ProtocolError."""
    if isinstance(data, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frames must be binary msgpack")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_SDP_LEN,
            max_bin_len=MAX_BIN_LEN,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "bad frame"
        raise ProtocolError(ErrorCode.BAD_FRAME, f"invalid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame must be a msgpack map")
    if not _depth_ok(obj):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame nested too deeply")
    if not _strings_ok({k: v for k, v in obj.items() if k != "sdp"}):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"string longer than {MAX_STR_LEN} bytes")
    return obj


def _cid(obj: dict[str, Any]) -> str | int | None:
    cid = obj.get("cid")
    if cid is None:
        return None
    if isinstance(cid, bool) or not isinstance(cid, (str, int)):
        raise ProtocolError(ErrorCode.BAD_FIELD, "cid must be a string or integer")
    if isinstance(cid, str) and len(cid) > MAX_CID_LEN:
        raise ProtocolError(ErrorCode.BAD_FIELD, "cid too long")
    if isinstance(cid, int) and not -(2**53) < cid < 2**53:
        raise ProtocolError(ErrorCode.BAD_FIELD, "cid out of range")
    return cid


def _str(obj: dict[str, Any], key: str, ref: Any, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"'{key}' must be a string", ref)
    return check_unicode(value, ref)


def parse_client_message(data: bytes | str) -> ClientMessage:
    """Decode and validate one client frame (see docs/PROTOCOL.md)."""
    obj = unpack(data)
    kind = obj.get("t")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'t' (message type) must be a string")
    if kind == "danmaku":
        cid = _cid(obj)
        return Danmaku(text=_str(obj, "text", cid), cid=cid)  # type: ignore[arg-type]
    if kind == "like":
        count = obj.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_LIKE_COUNT:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"'count' must be an integer 1..{MAX_LIKE_COUNT}")
        return Like(count=count)
    if kind == "dm":
        cid = _cid(obj)
        to = _str(obj, "to", cid)
        assert to is not None
        if not valid_id(to):
            raise ProtocolError(ErrorCode.BAD_RECIPIENT, "'to' is not a valid user id", cid)
        return DirectMessage(to=to, text=_str(obj, "text", cid), cid=cid)  # type: ignore[arg-type]
    if kind == "dm_seen":
        dm_id = obj.get("id")
        if not isinstance(dm_id, str) or not valid_dm_id(dm_id):
            raise ProtocolError(ErrorCode.BAD_FIELD, "'id' must be a DM id (<ms>-<n>)")
        return DmSeen(id=dm_id)
    if kind == "ping":
        ts = obj.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise ProtocolError(ErrorCode.BAD_FIELD, "'ts' must be a number")
        return Ping(ts=ts)
    if kind == "stats":
        ms = obj.get("first_frame_ms")
        if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= MAX_FIRST_FRAME_MS:
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"'first_frame_ms' must be an integer 0..{MAX_FIRST_FRAME_MS}"
            )
        return Stats(first_frame_ms=ms)
    if kind == "join":
        version = obj.get("v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {PROTOCOL_VERSION} only")
        room = _str(obj, "room", None, required=False)
        if room is not None and not valid_id(room):
            raise ProtocolError(ErrorCode.BAD_FIELD, "'room' is not a valid room id")
        resume = obj.get("resume")
        epoch = seq = None
        if resume is not None:
            if not isinstance(resume, dict):
                raise ProtocolError(ErrorCode.BAD_FIELD, "'resume' must be a map")
            epoch, seq = resume.get("epoch"), resume.get("seq")
            if not isinstance(epoch, str) or isinstance(seq, bool) or not isinstance(seq, int):
                raise ProtocolError(ErrorCode.BAD_FIELD, "'resume' needs epoch (str) and seq (int)")
        return Join(
            token=_str(obj, "token", None, required=False),
            room=room,
            resume_epoch=epoch,
            resume_seq=seq,
            subscribe=join_subscribe(obj.get("subscribe")),
        )
    if kind == "leave":
        return Leave()
    if kind == "slow_mode":
        cid = _cid(obj)
        seconds = obj.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= MAX_SLOW_MODE:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"'seconds' must be an integer 0..{MAX_SLOW_MODE}", cid)
        return SlowMode(seconds=seconds, cid=cid)
    if kind == "viewers":
        return Viewers(cid=_cid(obj))
    if kind in _RETENTION_PARSERS:
        return _RETENTION_PARSERS[kind](obj)
    if kind in _MEDIA_PARSERS:
        return _MEDIA_PARSERS[kind](obj)
    if kind in ("mod", "block", "unblock"):
        return _parse_moderation(kind, obj)
    if kind in _ANSWER_PARSERS:
        return _ANSWER_PARSERS[kind](obj)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:32]!r}")


def join_subscribe(value: Any) -> str | int | bool | None:
    """The join's `subscribe` field (also `?subscribe=` in the URL): True, or the cid of the offer."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    return _cid({"cid": value})


def _sdp(obj: dict[str, Any], cid: str | int | None) -> str:
    """SDP travels as a str of at most MAX_SDP_LEN characters; content is checked by the SFU."""
    sdp = obj.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProtocolError(ErrorCode.BAD_FIELD, "'sdp' must be a non-empty string", cid)
    if len(sdp) > MAX_SDP_LEN:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"'sdp' longer than {MAX_SDP_LEN} characters", cid)
    return sdp


def _invite(obj: dict[str, Any]) -> Invite:
    cid = _cid(obj)
    uid = _str(obj, "uid", cid)
    assert uid is not None
    if not valid_id(uid):
        raise ProtocolError(ErrorCode.BAD_RECIPIENT, "'uid' is not a valid user id", cid)
    return Invite(uid=uid, cid=cid)


def _with_sdp(cls: type[Publish] | type[Answer]) -> Any:
    def parse(obj: dict[str, Any]) -> Publish | Answer:
        cid = _cid(obj)
        return cls(sdp=_sdp(obj, cid), cid=cid)

    return parse


_MEDIA_PARSERS: dict[str, Any] = {
    "publish": _with_sdp(Publish),
    "answer": _with_sdp(Answer),
    "unpublish": lambda obj: Unpublish(cid=_cid(obj)),
    "subscribe": lambda obj: Subscribe(cid=_cid(obj)),
    "unsubscribe": lambda obj: Unsubscribe(cid=_cid(obj)),
    "invite": _invite,
}


# -- gifts, follows, schedules, links (what brings viewers back) -----------------------------


def _uid(obj: dict[str, Any], key: str, cid: str | int | None) -> str:
    value = _str(obj, key, cid)
    assert value is not None
    if not valid_id(value):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"'{key}' is not a valid id", cid)
    return value


def _int(
    obj: dict[str, Any], key: str, low: int, high: int, cid: str | int | None, default: Any = None
) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"'{key}' must be an integer {low}..{high}", cid)
    return value


def _gift(obj: dict[str, Any]) -> Gift:
    cid = _cid(obj)
    return Gift(gift=_uid(obj, "gift", cid), count=_int(obj, "count", 1, MAX_GIFT_COUNT, cid, 1), cid=cid)


def _follow(on: bool) -> Any:
    def parse(obj: dict[str, Any]) -> Follow:
        cid = _cid(obj)
        return Follow(host=_uid(obj, "host", cid), on=on, cid=cid)

    return parse


def _schedule(obj: dict[str, Any]) -> Schedule:
    cid = _cid(obj)
    at = _int(obj, "at", 0, 2**53, cid)
    title = clean_text(_str(obj, "title", cid) or "", MAX_TITLE_LEN, cid)
    return Schedule(at=at, title=title, cid=cid)


def _reserve(obj: dict[str, Any]) -> Reserve:
    cid = _cid(obj)
    return Reserve(host=_uid(obj, "host", cid), id=_uid(obj, "id", cid), cid=cid)


def _link(obj: dict[str, Any]) -> Link:
    cid = _cid(obj)
    action = obj.get("action")
    if not isinstance(action, str) or action not in LINK_ACTIONS:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"'action' must be one of {sorted(LINK_ACTIONS)}", cid)
    room = _uid(obj, "room", cid) if action in ("invite", "accept", "decline") else None
    seconds = _int(obj, "seconds", *PK_SECONDS, cid, 180) if action == "pk" else None
    penalty = _int(obj, "penalty", *PK_PENALTY_SECONDS, cid, 0) if action == "pk" else None
    return Link(action=action, room=room, seconds=seconds, cid=cid, penalty=penalty)


_RETENTION_PARSERS: dict[str, Any] = {
    "gift": _gift,
    "follow": _follow(True),
    "unfollow": _follow(False),
    "schedule": _schedule,
    "reserve": _reserve,
    "link": _link,
}


# -- moderation (server.abuse.moderation) --------------------------------------------------

MOD_ACTIONS = frozenset({"mute", "unmute", "kick", "ban", "unban", "delete"})
MAX_MOD_DURATION = 30 * 86400  # seconds
MAX_REASON_LEN = 200


def _parse_moderation(kind: str, obj: dict[str, Any]) -> Mod | Block:
    cid = _cid(obj)
    if kind != "mod":
        uid = _str(obj, "uid", cid)
        assert uid is not None
        if not valid_id(uid):
            raise ProtocolError(ErrorCode.BAD_FIELD, "'uid' is not a valid user id", cid)
        return Block(uid=uid, blocked=kind == "block", cid=cid)
    action = obj.get("action")
    if not isinstance(action, str) or action not in MOD_ACTIONS:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"'action' must be one of {sorted(MOD_ACTIONS)}", cid)
    uid = seq = duration = None
    if action == "delete":
        seq = obj.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2**53:
            raise ProtocolError(ErrorCode.BAD_FIELD, "'seq' must be a positive integer", cid)
    else:
        uid = _str(obj, "uid", cid)
        assert uid is not None
        if not valid_id(uid):
            raise ProtocolError(ErrorCode.BAD_FIELD, "'uid' is not a valid user id", cid)
    raw = obj.get("duration")
    if raw is not None:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw <= MAX_MOD_DURATION:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"'duration' must be in (0, {MAX_MOD_DURATION}] s", cid)
        duration = float(raw)
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'reason' must be a string", cid)
    check_unicode(reason, cid)
    return Mod(action, uid, seq, duration, reason[:MAX_REASON_LEN], cid)


def _seqs(obj: dict[str, Any], cid: str | int | None) -> list[int]:
    seqs = obj.get("seqs")
    if not isinstance(seqs, list) or not 1 <= len(seqs) <= MAX_REPLY_TARGETS:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"'seqs' must be a list of 1-{MAX_REPLY_TARGETS} seqs", cid)
    if any(isinstance(q, bool) or not isinstance(q, int) or not 0 < q < 2**53 for q in seqs):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'seqs' must hold positive integers", cid)
    return list(dict.fromkeys(seqs))


def _askers(obj: dict[str, Any], cid: str | int | None, *, unique: bool = True) -> list[str]:
    askers = obj.get("askers", [])
    if not isinstance(askers, list) or len(askers) > MAX_REPLY_TARGETS:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"'askers' must be a list of at most {MAX_REPLY_TARGETS} uids", cid
        )
    if not all(isinstance(a, str) and valid_id(a) for a in askers):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'askers' must hold user ids", cid)
    return list(dict.fromkeys(askers)) if unique else list(askers)


def _reply(obj: dict[str, Any]) -> Reply:
    cid = _cid(obj)
    text = _str(obj, "text", cid)
    pin = obj.get("pin", False)
    if not isinstance(pin, bool):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'pin' must be a boolean", cid)
    return Reply(text=text or "", seqs=_seqs(obj, cid), askers=_askers(obj, cid), pin=pin, cid=cid)


def _question(obj: dict[str, Any]) -> Question:
    cid = _cid(obj)
    key, label = _str(obj, "key", cid), _str(obj, "label", cid)
    assert key is not None and label is not None
    if not 0 < len(key) <= MAX_ID_LEN or not 0 < len(label) <= 64:
        raise ProtocolError(ErrorCode.BAD_FIELD, "'key' must be 1-64 and 'label' 1-64 characters", cid)
    names = obj.get("names", [])
    if (
        not isinstance(names, list)
        or len(names) > MAX_REPLY_TARGETS
        or not all(isinstance(n, str) and len(n) <= 64 for n in names)
    ):
        raise ProtocolError(
            ErrorCode.BAD_FIELD,
            f"'names' must be a list of at most {MAX_REPLY_TARGETS} names (64 chars)",
            cid,
        )
    for name in names:
        check_unicode(name, cid)
    return Question(
        key=key,
        label=label,
        seqs=_seqs(obj, cid),
        askers=_askers(obj, cid, unique=False),  # askers[i] asked seqs[i] (a user may ask twice)
        cid=cid,
        names=names,
    )


# product card fields a pin may carry, and their types (the rest of a catalogue entry stays home)
PRODUCT_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "name": (str,),
    "price": (int, float),
    "stock": (int,),
    "sizes": (list,),
    "colours": (list,),
    "shipping": (str,),
    "link": (str,),
}


def _product_card(raw: Any, cid: str | int | None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'product' must be a map", cid)
    card = {k: v for k, v in raw.items() if k in PRODUCT_FIELDS}
    for key, value in card.items():
        if isinstance(value, bool) or not isinstance(value, PRODUCT_FIELDS[key]):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"product '{key}' has the wrong type", cid)
        if isinstance(value, str) and len(value) > 200:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"product '{key}' longer than 200 characters", cid)
        if isinstance(value, list) and not all(isinstance(v, str) and len(v) <= 32 for v in value):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"product '{key}' must list short strings", cid)
    if not encodable(card):
        raise ProtocolError(ErrorCode.BAD_FIELD, "product text is not valid Unicode (a lone surrogate)", cid)
    pid, name = card.get("id"), card.get("name")
    if not isinstance(pid, str) or not 0 < len(pid) <= MAX_PRODUCT_ID_LEN or not name:
        raise ProtocolError(ErrorCode.BAD_FIELD, "a product card needs 'id' (1-64) and 'name'", cid)
    return card


def _pin(obj: dict[str, Any]) -> Pin:
    cid = _cid(obj)
    product, text = obj.get("product"), obj.get("text")
    if (product is None) == (text is None):
        raise ProtocolError(ErrorCode.BAD_FIELD, "a pin needs exactly one of 'product' and 'text'", cid)
    if text is not None and not isinstance(text, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'text' must be a string", cid)
    if text is not None:
        check_unicode(text, cid)
    return Pin(product=None if product is None else _product_card(product, cid), text=text, cid=cid)


def _unpin(obj: dict[str, Any]) -> Unpin:
    cid = _cid(obj)
    pin_id = _str(obj, "id", cid)
    assert pin_id is not None
    if not 0 < len(pin_id) <= 2 * MAX_ID_LEN:
        raise ProtocolError(ErrorCode.BAD_FIELD, "'id' is not a pin id", cid)
    return Unpin(id=pin_id, cid=cid)


def _product_edit(obj: dict[str, Any]) -> ProductEdit:
    cid = _cid(obj)
    pid = _str(obj, "id", cid)
    assert pid is not None
    if not 0 < len(pid) <= MAX_PRODUCT_ID_LEN:
        raise ProtocolError(ErrorCode.BAD_FIELD, "'id' is not a product id", cid)
    price, stock = obj.get("price"), obj.get("stock")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'price' must be a number >= 0", cid)
    if stock is not None and (isinstance(stock, bool) or not isinstance(stock, int) or stock < 0):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'stock' must be an integer >= 0", cid)
    if price is None and stock is None:
        raise ProtocolError(ErrorCode.BAD_FIELD, "a product edit needs 'price' or 'stock'", cid)
    return ProductEdit(id=pid, price=price, stock=stock, cid=cid)


_ANSWER_PARSERS: dict[str, Any] = {
    "reply": _reply,
    "question": _question,
    "pin": _pin,
    "unpin": _unpin,
    "product": _product_edit,
}


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


def valid_dm_id(value: str) -> bool:
    """DM ids are Redis stream ids, `<ms>-<n>`: digits only, so safe to pass to XTRIM."""
    ms, sep, n = value.partition("-")
    return bool(sep) and 0 < len(ms) <= 20 and 0 < len(n) <= 20 and (ms + n).isascii() and (ms + n).isdigit()


def valid_id(value: str) -> bool:
    """Room and user ids: short, printable ASCII, safe as Redis keys and URL parts."""
    return 0 < len(value) <= MAX_ID_LEN and _ID_CHARS.issuperset(value)


# C0/C1 controls, DEL, bidi overrides and isolates, line/paragraph separators:
# danmaku is one line of plain text, and these are how people break layouts.
_CONTROL_TABLE = dict.fromkeys(
    [*range(0, 32), 127, *range(128, 160), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)],
    None,
)


def strip_controls(text: str) -> str:
    """Text without control characters and surrounding space (danmaku, DMs, display names)."""
    return text.translate(_CONTROL_TABLE).strip()


def valid_unicode(text: str) -> bool:
    """Whether the text encodes as UTF-8: no lone UTF-16 surrogate (a JSON `"\\ud83d"` escape, an
    emoji cut in half by a token service), which no frame could carry."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_unicode(text: str, ref: Any = None) -> str:
    """The text, or BAD_FIELD when it holds a lone surrogate (every door that takes text)."""
    if not valid_unicode(text):
        raise ProtocolError(ErrorCode.BAD_FIELD, "text is not valid Unicode (a lone surrogate)", ref)
    return text


def clean_text(text: str, max_len: int, ref: Any = None) -> str:
    """Strip control characters and surrounding space; enforce valid Unicode, non-empty and max length."""
    cleaned = strip_controls(check_unicode(text, ref))
    if not cleaned:
        raise ProtocolError(ErrorCode.TEXT_EMPTY, "text is empty", ref)
    if len(cleaned) > max_len:
        raise ProtocolError(ErrorCode.TEXT_TOO_LONG, f"text longer than {max_len} characters", ref)
    return cleaned


# --- server -> client frames ------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True)

# What packing raises on a value no frame can carry: UnicodeEncodeError (a ValueError) for a lone
# surrogate, TypeError for a foreign type, OverflowError for an integer past 64 bits.
ENCODE_ERRORS = (ValueError, TypeError, OverflowError)


def pack(obj: dict[str, Any]) -> bytes:
    return _packer.pack(obj)


class SharedFields:
    """A frame's fields encoded once, completed per connection by a few fields of its own.

    A room reset sends every member a snapshot (Node.resync) that differs only in `you` and
    the like: the room's part (recent danmaku, pins, ...) is packed once, and each frame is
    that map's entries with the connection's own appended under one map header (msgpack maps
    are a count followed by key/value pairs), so the cost per member is its few fields.
    """

    __slots__ = ("_body", "_count")

    def __init__(self, fields: dict[str, Any]) -> None:
        self._count = len(fields)
        self._body = _map_body(_packer.pack(fields), self._count)

    def pack(self, *extra: dict[str, Any]) -> bytes:
        """The shared fields plus `extra`'s (keys the shared part does not have) as one map."""
        count = self._count + sum(len(e) for e in extra)
        parts = [_map_header(count), self._body]
        parts.extend(_map_body(_packer.pack(e), len(e)) for e in extra)
        return b"".join(parts)


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x80 | count,))
    if count < 1 << 16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def _map_body(packed: bytes, count: int) -> bytes:
    """A packed map's key/value pairs, without its header."""
    return packed[len(_map_header(count)) :]


def encodable(obj: Any) -> bool:
    """Whether `obj` packs into a frame (checked where a value enters or an encode failed)."""
    try:
        msgpack.packb(obj, use_bin_type=True)
    except ENCODE_ERRORS:
        return False
    return True


def now_ms() -> int:
    return int(time.time() * 1000)


def error_frame(code: ErrorCode, message: str, ref: Any = None, retry_after: float | None = None) -> bytes:
    frame: dict[str, Any] = {"t": "error", "code": int(code), "msg": message}
    if ref is not None:
        frame["ref"] = ref
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return pack(frame)


def batch_frame(
    room: str, events: list[dict[str, Any]], epoch: str | None = None, sampled: int = 0, upto: int = 0
) -> bytes:
    """One tick of a room's events, encoded once and written to every viewer.

    `epoch` names the stream the events' seqs belong to (None only for an unsequenced echo).
    The Redis publish script builds the same bytes (redis_scripts.batch_head).
    `sampled`: danmaku of the frame's seqs left out by the room's event budget (delivery/budget.py),
    `upto`: the last seq the frame covers then.
    """
    if sampled:
        return pack(
            {"t": "batch", "room": room, "epoch": epoch, "events": events, "sampled": sampled, "upto": upto}
        )
    if epoch is None:
        return pack({"t": "batch", "room": room, "events": events})
    return pack({"t": "batch", "room": room, "epoch": epoch, "events": events})


def pong_frame(ts: int | float | None) -> bytes:
    return pack({"t": "pong", "ts": ts, "server_ts": now_ms()})


def dropped_frame(count: int) -> bytes:
    return pack({"t": "dropped", "count": count})
