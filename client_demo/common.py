"""Shared by the Python demo clients: server URLs, tokens, and the msgpack WebSocket loop."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgpack

DEFAULT_SERVER = "ws://127.0.0.1:8080"


def http_base(server: str) -> str:
    """ws://host:port[/ws] -> http://host:port (the same port serves the dev token endpoint)."""
    parts = urllib.parse.urlsplit(server)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    return f"{scheme}://{parts.netloc}"


def ws_url(server: str) -> str:
    parts = urllib.parse.urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme or "ws")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return f"{scheme}://{parts.netloc}{path}"


def get_token(server: str, room: str, user: str, name: str, role: str, token: str | None = None) -> str:
    """--token if given, else the server's dev endpoint, else one signed with LIVEROOM_SECRET.

    The dev endpoint is asked on every call, so each (re)connection gets a fresh token
    (servers started with --join-nonce accept a token once).
    """
    if token:
        return token
    query = urllib.parse.urlencode({"room": room, "user": user, "name": name, "role": role})
    try:
        with urllib.request.urlopen(f"{http_base(server)}/api/dev/token?{query}", timeout=10) as res:
            return str(json.load(res)["token"])
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    from server.abuse.tokens import Keyring  # dev tokens are off: sign one, as `liveroom token` does
    from server.config import from_env

    env = from_env()
    return Keyring.from_config(env.secret, env.secret_old, env.secrets).mint(
        room=room, user=user, name=name, role=role
    )


def pack(frame: dict[str, Any]) -> bytes:
    return msgpack.packb(frame)


def unpack(data: bytes | str) -> dict[str, Any]:
    obj = msgpack.unpackb(data) if isinstance(data, bytes) else {}
    return obj if isinstance(obj, dict) else {}


class Backoff:
    """Reconnect delays: 0.5 s doubling to 8 s, reset after a successful join."""

    def __init__(self, first: float = 0.5, cap: float = 8.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first
