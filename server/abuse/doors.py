"""The node's doors (entry points a client can authenticate at) and the checks each runs.

Why a registry: every door authorises through the same Guard code, and a door added
without saying which checks it runs (and without a row in tests/test_doors.py) is how
one door ends up weaker than the others. docs/API.md and docs/PROTOCOL.md print this
table; the test iterates it.

Refusals over HTTP carry the same stable codes as the WebSocket's error frames, in a
JSON body `{"code": 4101, "error": "TOKEN_INVALID", "msg": "..."}`, with the status below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from server.wire.protocol import ErrorCode, ProtocolError

Credential = Literal["room", "host_or_admin", "admin"]


@dataclass(frozen=True, slots=True)
class Door:
    name: str
    credential: Credential  # room: a room token; host_or_admin: host token or admin token; admin
    host_check: bool  # Host allow-list (DNS rebinding)
    origin_check: bool  # Origin allow-list (only where a browser could carry ambient credentials)
    rate: tuple[str, ...]  # join buckets taken: "ip", "user"
    nonce: bool  # with --join-nonce, claims the token's jti (a new session)
    sanctions: bool  # bans and kicks in the room refuse
    caps: str  # concurrency caps (documentation)


WS = Door("ws", "room", True, True, ("ip", "user"), True, True, "connections per IP and per user")
WHIP = Door(
    "whip", "room", True, False, ("ip", "user"), True, True, "media sessions per user per room, per IP"
)
# RTMP ingest (server.edge.rtmp): nginx-rtmp's on_publish callback; RTMP carries no Host or Origin
RTMP = Door(
    "rtmp", "room", False, False, ("ip", "user"), True, True, "media sessions per user per room, per IP"
)
# POST /rtmp/<room>/key: a host token for a short RTMP publish key (its nonce is claimed when it
# publishes, at the rtmp door: getting one is not a session, like the HLS token's endpoint)
RTMP_KEY = Door(
    "rtmp_key", "room", True, False, ("ip", "user"), False, True, "none (a key per request, expiring)"
)
WHEP = Door(
    "whep", "room", True, False, ("ip", "user"), True, True, "media sessions per user per room, per IP"
)
# the HLS URL token's endpoint (GET /hls/<room>/token); its files then check the URL token and bans
HLS = Door(
    "hls", "room", True, False, ("ip", "user"), False, True, "none (one URL token per viewer, expiring)"
)
STATS = Door("stats", "host_or_admin", True, False, ("ip",), False, True, "none (read-only)")
ADMIN = Door("admin", "admin", True, False, ("ip",), False, False, "none (admin token)")

DOORS: tuple[Door, ...] = (WS, WHIP, RTMP, RTMP_KEY, WHEP, HLS, STATS, ADMIN)

# HTTP status of each refusal code on the HTTP doors (anything else: 400).
STATUS: dict[ErrorCode, int] = {
    ErrorCode.AUTH_REQUIRED: 401,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_REPLAYED: 401,
    ErrorCode.WRONG_ROOM: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.KICKED: 403,
    ErrorCode.BANNED: 403,
    ErrorCode.MEDIA_FORBIDDEN: 403,
    ErrorCode.HOST_FORBIDDEN: 403,
    ErrorCode.ORIGIN_FORBIDDEN: 403,
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.BAD_FIELD: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.MEDIA_BAD_SDP: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.BODY_TIMEOUT: 408,
    ErrorCode.BAD_CONTENT_TYPE: 415,
    ErrorCode.MEDIA_UNSUPPORTED: 422,
    ErrorCode.MEDIA_TOO_MANY_TRACKS: 422,
    ErrorCode.MEDIA_CODEC_MISMATCH: 409,
    ErrorCode.MEDIA_VIEWER_CODEC: 422,
    ErrorCode.MEDIA_ALREADY_PUBLISHING: 409,
    ErrorCode.MEDIA_BAD_STATE: 409,
    ErrorCode.MEDIA_NO_MEDIA: 409,
    ErrorCode.MEDIA_WRONG_NODE: 421,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.JOIN_THROTTLED: 429,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.MEDIA_TOO_MANY_SESSIONS: 429,
    ErrorCode.NODE_BUSY: 503,
    ErrorCode.BROKER_UNAVAILABLE: 503,
    ErrorCode.MEDIA_TOO_MANY_PUBLISHERS: 503,
    ErrorCode.MEDIA_TOO_MANY_VIEWERS: 503,
    ErrorCode.MEDIA_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
RETRY_AFTER = 10  # seconds, on a 503 without its own retry_after (RFC 9725 section 4.6)


def bearer(header: str) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None (the guard answers 401)."""
    scheme, _, token = header.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def error_body(code: ErrorCode, message: str) -> str:
    return json.dumps({"code": int(code), "error": code.name, "msg": message})


def http_error(error: ProtocolError, headers: dict[str, str] | None = None) -> web.Response:
    """A refusal as an HTTP answer: the status for its code, a JSON body, the right headers."""
    status = STATUS.get(error.code, 400)
    out = dict(headers or {})
    if status == 401:
        out["WWW-Authenticate"] = 'Bearer realm="liveroom"'
    if status in (429, 503):
        out["Retry-After"] = str(max(1, round(error.retry_after or RETRY_AFTER)))
    return web.Response(
        status=status,
        text=error_body(error.code, error.message),
        content_type="application/json",
        headers=out,
    )
