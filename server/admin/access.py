"""Who may call the operator API: the admin token (constant-time compare), or for a room's
stats a host token of that room. No Authorization: 401; a valid token without the right: 403."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from aiohttp import web

from server import auth
from server.protocol import ErrorCode, ProtocolError

Verify = Callable[[str, str | None], auth.Identity]  # the node's keyring: current and rotated keys
VERIFY_KEY = web.AppKey("liveroom.verify", Verify)  # tells room tokens (403) from junk (401)


def bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _denied(401, "Authorization: Bearer <token> required")
    return token.strip()


def is_admin(admin_token: str, token: str) -> bool:
    return bool(admin_token) and hmac.compare_digest(admin_token.encode(), token.encode())


def require_admin(request: web.Request, admin_token: str) -> None:
    token = bearer(request)
    if not is_admin(admin_token, token):
        raise _denied(403 if _is_room_token(request, token) else 401, "admin token required")


def require_host_or_admin(request: web.Request, admin_token: str, verify: Verify, room: str) -> None:
    token = bearer(request)
    if is_admin(admin_token, token):
        return
    try:
        who = verify(token, room)
    except ProtocolError as error:
        status = 403 if error.code == ErrorCode.WRONG_ROOM else 401
        raise _denied(status, error.message) from None
    if who.role != "host":
        raise _denied(403, "only a host of this room or an admin")


def _is_room_token(request: web.Request, token: str) -> bool:
    """A signed room token is a known caller without the admin right (403, not 401)."""
    try:
        request.app[VERIFY_KEY](token, None)
    except ProtocolError:
        return False
    return True


def _denied(status: int, message: str) -> web.HTTPException:
    headers = {"WWW-Authenticate": 'Bearer realm="liveroom"'} if status == 401 else {}
    cls = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    return cls(text=json.dumps({"error": message}), content_type="application/json", headers=headers)
