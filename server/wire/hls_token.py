"""HLS URL tokens: a viewer's room token exchanged for a short, signed, expiring path element.

Why not the room token itself: an HLS player (or a CDN) puts the credential in every URL it
fetches, logs and caches; a JWT there would leak a reusable join credential. The URL token
only opens `/hls/<room>/...` until it expires, names its viewer (so a ban refuses it) and is
an HMAC a CDN edge can check with the shared key (docs/API.md "HLS"). Pure code.

Format: `<uid as base64url>.<exp epoch seconds>.<signature base64url>`, the signature being
HMAC-SHA256(key, "hls1|<room>|<uid>|<exp>") cut to 16 bytes, key derived from the signing
secret so no other token issuer can mint one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from server.wire.protocol import ErrorCode, ProtocolError

DEFAULT_TTL = 3600  # seconds: the player keeps one URL for a whole viewing session
MAX_LEN = 200


@dataclass(frozen=True, slots=True)
class HlsGrant:
    room: str
    uid: str
    exp: int


def hls_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"liveroom hls url token v1", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, room: str, uid: str, exp: int) -> str:
    mac = hmac.new(key, f"hls1|{room}|{uid}|{exp}".encode(), hashlib.sha256).digest()
    return _b64(mac[:16])


def mint(secret: str, *, room: str, uid: str, exp: int) -> str:
    return f"{_b64(uid.encode())}.{exp}.{_signature(hls_key(secret), room, uid, exp)}"


def verify(secrets: list[str], token: str, room: str, now: float) -> HlsGrant:
    """The grant a token carries for `room`; TOKEN_INVALID or TOKEN_EXPIRED otherwise.

    `secrets` are the keyring's secrets, signing one first (a rotated key still verifies).
    """
    if not token or len(token) > MAX_LEN or not token.isascii() or token.count(".") != 2:
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "hls token invalid: malformed")
    encoded_uid, exp_text, signature = token.split(".")
    try:
        uid = _unb64(encoded_uid).decode()
        exp = int(exp_text)
    except (ValueError, binascii.Error):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "hls token invalid: malformed") from None
    if not any(hmac.compare_digest(_signature(hls_key(s), room, uid, exp), signature) for s in secrets):
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "hls token invalid: bad signature or another room")
    if exp < now:
        raise ProtocolError(ErrorCode.TOKEN_EXPIRED, "hls token expired: fetch a new one")
    return HlsGrant(room, uid, exp)
