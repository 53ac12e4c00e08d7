"""RTMP publish keys: a host token exchanged for a short stream key an encoder can carry.

Why not the host token itself: nginx-rtmp keeps at most 255 bytes of a stream name with its
arguments (a compile-time limit), and a host token (a JWT with the host's name) is about 250
bytes with short ids: a longer name or id gets the key cut and refused. A publish key is about
70 bytes with the same ids (205 at most), names its room and host (so bans and kicks refuse
it), expires, carries a nonce (claimed once with --join-nonce, like a token's `jti`), and is an
HMAC under a key derived from the signing secret, so no other token issuer can mint one. Pure
code; the Guard mints and checks it (server.abuse.guard), the `rtmp_key` door hands it out.

Format: `<room>~<uid>~<name>~<exp>~<nonce>~<signature>`: room and uid as they are (ids never
contain `~`), the display name as base64url of at most 24 UTF-8 bytes (empty when it is the
uid), exp in base 36 (epoch seconds), 8 random bytes of nonce and HMAC-SHA256(key,
"rtmp1|room|uid|name|exp|nonce") cut to 16 bytes, both base64url.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as random
from dataclasses import dataclass

from server.wire.protocol import ErrorCode, ProtocolError, valid_id

SEPARATOR = "~"
DEFAULT_TTL = 24 * 3600  # seconds: a day of shows from one key in the encoder's settings
MIN_TTL = 60
MAX_TTL = 7 * 24 * 3600
NAME_BYTES = 24  # of the display name kept (cut at a character boundary): the key stays short
MAX_LEN = 64 + 64 + 32 + 7 + 11 + 22 + 5  # room, uid, name, exp, nonce, signature, separators


@dataclass(frozen=True, slots=True)
class PublishGrant:
    room: str
    uid: str
    name: str  # "" when the key carries none (the uid is shown)
    exp: int
    nonce: str


def publish_key_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"liveroom rtmp publish key v1", hashlib.sha256).digest()


def looks_like_key(stream_name: str) -> bool:
    """Whether an RTMP stream name is a publish key (a JWT or a room id never has `~`)."""
    return SEPARATOR in stream_name


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, room: str, uid: str, name: str, exp: int, nonce: str) -> str:
    mac = hmac.new(key, f"rtmp1|{room}|{uid}|{name}|{exp}|{nonce}".encode(), hashlib.sha256).digest()
    return _b64(mac[:16])


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if not n:
            return out


def mint(secret: str, *, room: str, uid: str, name: str, exp: int, nonce: str | None = None) -> str:
    if not valid_id(room) or not valid_id(uid):
        raise ValueError("room and user must be ids")
    kept = "" if name == uid else name.encode()[:NAME_BYTES].decode(errors="ignore")
    encoded = _b64(kept.encode())
    nonce = nonce or _b64(random.token_bytes(8))
    signature = _signature(publish_key_key(secret), room, uid, encoded, exp, nonce)
    return SEPARATOR.join((room, uid, encoded, _base36(exp), nonce, signature))


def verify(secrets: list[str], key: str, now: float) -> PublishGrant:
    """The grant a key carries; TOKEN_INVALID or TOKEN_EXPIRED otherwise.

    `secrets` are the keyring's secrets, signing one first (a rotated key still verifies).
    """
    parts = key.split(SEPARATOR) if key.isascii() and len(key) <= MAX_LEN else []
    if len(parts) != 6:
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "publish key invalid: malformed")
    room, uid, encoded, exp_text, nonce, signature = parts
    try:
        name = _unb64(encoded).decode()
        exp = int(exp_text, 36)
    except (ValueError, binascii.Error):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "publish key invalid: malformed") from None
    canonical = exp >= 0 and _base36(exp) == exp_text  # one spelling per key ("+", "_", "0" prefixes)
    if not (canonical and valid_id(room) and valid_id(uid) and 8 <= len(nonce) <= 16):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "publish key invalid: malformed")
    if not any(
        hmac.compare_digest(_signature(publish_key_key(s), room, uid, encoded, exp, nonce), signature)
        for s in secrets
    ):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "publish key invalid: bad signature")
    if exp < now:
        raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "publish key expired: get a new one")
    return PublishGrant(room, uid, name, exp, nonce)
