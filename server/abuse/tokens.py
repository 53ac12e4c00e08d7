"""Token hardening on top of server.wire.auth: key rotation with key ids, and one-time join nonces.

Key rotation: the node accepts several HS256 secrets, each with a key id
(`kid`). Tokens carry the id in their header; the first key signs new tokens.
Configure either `LIVEROOM_SECRETS="kid1:secret1,kid2:secret2"` (first signs),
or `--secret` plus `--secret-old` (their ids are derived from the secrets).
A token without `kid` (or with an unknown one) is tried against each key.
Rotate by deploying `new,old`, waiting for the old tokens' TTL, then `new`.

Replay: with `--join-nonce` every token must carry a `jti` claim, and a join
claims it through the broker (`Broker.claim_nonce`, shared by every node) for
the token's remaining lifetime: a second join with the same token is refused.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import jwt

from server.wire import auth
from server.wire.protocol import ErrorCode, ProtocolError


def key_id(secret: str) -> str:
    """A short public id for a secret (8 hex of its SHA-256): safe to log and put in headers."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class Keyring:
    keys: tuple[tuple[str, str], ...]  # (kid, secret); the first one signs

    @classmethod
    def from_config(cls, secret: str, secret_old: str = "", secrets: str = "") -> Keyring:
        if secrets.strip():
            keys = []
            for item in secrets.split(","):
                kid, sep, value = item.strip().partition(":")
                if not sep or not kid or not value:
                    raise ValueError("LIVEROOM_SECRETS must be kid1:secret1,kid2:secret2")
                keys.append((kid, value))
            return cls(tuple(keys))
        keys = [(key_id(secret), secret)]
        keys += [(key_id(old.strip()), old.strip()) for old in secret_old.split(",") if old.strip()]
        return cls(tuple(keys))

    @property
    def signing(self) -> tuple[str, str]:
        return self.keys[0]

    def mint(self, **kw: object) -> str:
        kid, secret = self.signing
        return auth.mint(secret, kid=kid, **kw)  # type: ignore[arg-type]

    def verify(self, token: str | None, room: str | None) -> auth.Identity:
        """auth.verify with the key the header names, else each key in turn."""
        if not token:
            return auth.verify(self.keys[0][1], token, room)  # raises AUTH_REQUIRED
        if not token.isascii():  # a JWT is base64url: PyJWT would fail encoding it, not refuse it
            raise ProtocolError(ErrorCode.TOKEN_INVALID, "token invalid: not ASCII")
        if len(self.keys) == 1:
            return auth.verify(self.keys[0][1], token, room)
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise ProtocolError(ErrorCode.TOKEN_INVALID, f"token invalid: {exc}") from None
        for key, secret in self.keys:
            if key == kid:
                return auth.verify(secret, token, room)
        error: ProtocolError | None = None
        for _, secret in self.keys:
            try:
                return auth.verify(secret, token, room)
            except ProtocolError as exc:
                error = exc
                if exc.code != ErrorCode.TOKEN_INVALID:  # signature fine, something else wrong
                    raise
        assert error is not None
        raise error


def nonce_of(token: str) -> tuple[str, float]:
    """(jti, seconds it stays valid) of a token whose signature was already verified."""
    claims = jwt.decode(token, options={"verify_signature": False})
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
        raise ProtocolError(ErrorCode.TOKEN_INVALID, "this server needs a one-time token (jti claim)")
    ttl = float(claims.get("exp", 0)) + auth.CLOCK_SKEW - time.time()
    return jti, max(ttl, 1.0)
