"""ICE servers handed to clients: STUN/TURN URLs with TURN REST-style time-limited credentials.

Why: a viewer behind a symmetric NAT or a UDP-blocking firewall reaches the node only through
a TURN relay, and a TURN server must not be an open relay. With the "TURN REST API"
convention (coturn `use-auth-secret` + `static-auth-secret`) the node and the TURN server
share a secret: the username is `<expiry unix time>:<uid>` and the password is
base64(HMAC-SHA1(secret, username)), so each client gets a credential that expires on its
own and the TURN server needs no user database. The same list goes in every join snapshot
(`ice_servers`) and in WHIP/WHEP answers as `Link: <url>; rel="ice-server"` headers
(RFC 9725 section 4.6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from aiortc import RTCIceServer

SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


class IceConfigError(ValueError):
    """A malformed ICE server URL."""


def parse_urls(raw: str) -> tuple[str, ...]:
    """`stun:host:port,turn:host:port?transport=udp` -> the URLs, checked."""
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        if not url.startswith(SCHEMES) or len(url) > 256:
            raise IceConfigError(f"not a STUN/TURN URL: {url[:80]!r}")
    return urls


def turn_credential(secret: str, uid: str, ttl: int, now: float | None = None) -> tuple[str, str]:
    """(username, password) valid for `ttl` seconds, as coturn's `use-auth-secret` checks them."""
    expiry = int(now if now is not None else time.time()) + ttl
    username = f"{expiry}:{uid}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class IceServers:
    urls: tuple[str, ...] = ()
    turn_secret: str = ""
    turn_ttl: int = 3600

    @classmethod
    def from_config(cls, urls: str, turn_secret: str, turn_ttl: int) -> IceServers:
        parsed = parse_urls(urls)
        if any(u.startswith(("turn:", "turns:")) for u in parsed) and not turn_secret:
            raise IceConfigError("TURN URLs need --turn-secret (the TURN server's static-auth-secret)")
        return cls(parsed, turn_secret, turn_ttl)

    def for_client(self, uid: str, now: float | None = None) -> list[dict[str, Any]]:
        """RTCIceServer dicts for a browser's RTCPeerConnection (TURN with a fresh credential)."""
        stun = [u for u in self.urls if u.startswith(("stun:", "stuns:"))]
        turn = [u for u in self.urls if u.startswith(("turn:", "turns:"))]
        servers: list[dict[str, Any]] = []
        if stun:
            servers.append({"urls": stun})
        if turn:
            username, credential = turn_credential(self.turn_secret, uid, self.turn_ttl, now)
            servers.append({"urls": turn, "username": username, "credential": credential})
        return servers

    def link_headers(self, uid: str, now: float | None = None) -> list[str]:
        """RFC 9725 `Link` header values for a WHIP/WHEP answer."""
        links = []
        for server in self.for_client(uid, now):
            for url in server["urls"]:
                link = f'<{url}>; rel="ice-server"'
                if "username" in server:
                    link += f'; username="{server["username"]}"; credential="{server["credential"]}"'
                    link += '; credential-type="password"'
                links.append(link)
        return links

    def for_server(self) -> list[RTCIceServer]:
        """The node's own peer connections use STUN only (a reflexive address, no relaying)."""
        stun = [u for u in self.urls if u.startswith(("stun:", "stuns:"))]
        return [RTCIceServer(urls=stun)] if stun else []
