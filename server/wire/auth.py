"""Signed join tokens (HS256 JWT), checked locally: no network round trip on join."""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from jwt.algorithms import HMACAlgorithm

from server.wire.protocol import ErrorCode, ProtocolError, encodable, strip_controls, valid_id

Role = Literal["host", "moderator", "viewer", "assistant"]
# assistant: the live-commerce assistant (server/assistant): may reply and pin, may not moderate
ROLES: tuple[Role, ...] = ("host", "moderator", "viewer", "assistant")
DEFAULT_TTL = 6 * 3600
CLOCK_SKEW = 30  # seconds of leeway for clocks that disagree a little
MAX_NAME_LEN = 32
TIME_CLAIMS = ("exp", "nbf", "iat")


class _PreparedHS256(HMACAlgorithm):
    """HS256 that vets each secret once, not on every verify.

    PyJWT 2.15 checks an HMAC secret on every decode (it must not parse as DER, PEM, SSH
    or JWK: a JSON parse and two DER loads): 8 of a verify's 35 µs here. Our secrets come
    from the configuration, so the vetted bytes are kept per secret.
    """

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)

    def prepare_key(self, key: str | bytes) -> bytes:
        return _vetted(key)


@functools.lru_cache(maxsize=64)  # a few configured secrets (rotation, node keys); never token input
def _vetted(key: str | bytes) -> bytes:
    return HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(key)


def _decoder() -> jwt.PyJWT:
    """A PyJWT whose HS256 keeps vetted secrets (PyJWT has no public hook for its JWS)."""
    decoder = jwt.PyJWT()
    decoder._jws.unregister_algorithm("HS256")
    decoder._jws.register_algorithm("HS256", _PreparedHS256())
    return decoder


_JWT = _decoder()


def _decode(token: str, secret: str, **kwargs: Any) -> dict[str, Any]:
    return _JWT.decode(token, secret, algorithms=["HS256"], leeway=CLOCK_SKEW, **kwargs)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is, as the token says."""

    uid: str
    name: str
    room: str
    role: Role

    @property
    def can_moderate(self) -> bool:
        return self.role in ("host", "moderator")

    @property
    def can_answer(self) -> bool:
        """Replies, pins and product edits: the room's staff and its assistant."""
        return self.role in ("host", "moderator", "assistant")


def mint(
    secret: str,
    *,
    room: str,
    user: str,
    role: Role = "viewer",
    name: str | None = None,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
    kid: str | None = None,
    jti: str | None = None,
) -> str:
    """Create a token; used by the `token` CLI, the dev endpoint and the tests.

    `kid` names the signing key (key rotation); every token gets a random `jti`
    so it can be used as a one-time join nonce (server.abuse.tokens).
    """
    if not valid_id(room) or not valid_id(user):
        raise ValueError("room and user must be 1-64 chars of [A-Za-z0-9_.:-]")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": user,
        "name": (name or user)[:MAX_NAME_LEN],
        "room": room,
        "role": role,
        "iat": issued,
        "exp": issued + ttl,
        "jti": jti or secrets.token_urlsafe(12),
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid} if kid else None)


def verify(secret: str, token: str | None, room: str | None = None) -> Identity:
    """Check signature, expiry and room binding; raise ProtocolError with a stable code.

    Called by server.abuse.tokens.Keyring only: every door verifies through the guard.
    """
    if not token:
        raise ProtocolError(ErrorCode.AUTH_REQUIRED, "a token is required to join")
    try:
        claims = _decode(token, secret, options={"require": ["sub", "room", "role", "exp"]})
    except jwt.ExpiredSignatureError:
        raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "token expired") from None
    except jwt.PyJWTError as exc:
        raise ProtocolError(ErrorCode.TOKEN_INVALID, f"token invalid: {exc}") from None
    for claim in TIME_CLAIMS:  # PyJWT casts "123" with int(): numeric strings are not NumericDate
        value = claims.get(claim)
        if claim in claims and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise ProtocolError(ErrorCode.TOKEN_INVALID, f"token claim {claim!r} must be a number")
    if not encodable(claims):  # a lone surrogate ("\ud83d": a name cut in half) no frame can carry
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "token claims are not valid Unicode")
    uid, token_room, role = claims.get("sub"), claims.get("room"), claims.get("role")
    name = claims.get("name") or uid
    if not (isinstance(uid, str) and valid_id(uid) and isinstance(token_room, str)):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "token claims malformed")
    if not valid_id(token_room) or role not in ROLES or not isinstance(name, str):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "token claims malformed")
    if room is not None and room != token_room:
        raise ProtocolError(ErrorCode.WRONG_ROOM, "token is for another room")
    return Identity(uid=uid, name=display_name(name, uid), room=token_room, role=role)


def display_name(name: str, uid: str) -> str:
    """The name others see: danmaku's rules (no controls, bidi overrides), the uid when empty."""
    return strip_controls(name)[:MAX_NAME_LEN].strip() or uid


# -- node credentials (cascading media between nodes) -------------------------------------

NODE_AUDIENCE = "liveroom-node"
NODE_TTL = 60  # seconds: a relay presents it once, when it subscribes


def node_key(secret: str) -> bytes:
    """Key of node-to-node tokens, derived from the shared secret.

    Why derived and not the secret itself: every client-facing endpoint (`token` CLI, dev
    tokens, a customer's token service) signs with the secret, so none of them can produce
    a signature under this key; only a process that holds the secret and this code can.
    """
    return hmac.new(secret.encode(), b"liveroom node credential v1", hashlib.sha256).digest()


def mint_node(secret: str, *, room: str, node: str, ttl: int = NODE_TTL) -> str:
    """A short-lived credential for `node` to pull `room`'s media from another node."""
    issued = int(time.time())
    claims = {
        "sub": node,
        "room": room,
        "role": "node",
        "aud": NODE_AUDIENCE,
        "iat": issued,
        "exp": issued + ttl,
    }
    return jwt.encode(claims, node_key(secret), algorithm="HS256")


def is_node_token(token: str) -> bool:
    """Whether a (not yet verified) token claims to be a node credential."""
    if not token.isascii():
        return False
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("aud") == NODE_AUDIENCE
    except jwt.PyJWTError:
        return False


def verify_node(secret: str, token: str, room: str) -> str:
    """Check a node credential for `room`; returns the calling node's id."""
    try:
        claims = _decode(
            token,
            node_key(secret),
            audience=NODE_AUDIENCE,
            options={"require": ["sub", "room", "role", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "node credential expired") from None
    except jwt.PyJWTError as exc:
        raise ProtocolError(ErrorCode.TOKEN_INVALID, f"node credential invalid: {exc}") from None
    node = claims.get("sub")
    if claims.get("role") != "node" or not isinstance(node, str) or not valid_id(node):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "node credential malformed")
    if claims.get("room") != room:
        raise ProtocolError(ErrorCode.WRONG_ROOM, "node credential is for another room")
    return node
